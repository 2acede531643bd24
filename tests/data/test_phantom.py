"""The built-in phantom: real DICOM on disk, deterministic, Duke layout, labels that match."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from cad.data.phantom import BOX_HEADER, generate_phantom
from cad.data.phantom_anatomy import MAX_STORED, lesion_flags, simulate_patient
from cad.errors import CadError, DataError

SMALL = {"patients": 4, "slices": 12, "size": 48, "seed": 3, "lesion_fraction": 0.5}
UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
DCE = ("ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass")
REQUIRED = """
    SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID FrameOfReferenceUID Modality
    Rows Columns BitsAllocated BitsStored HighBit PixelRepresentation PhotometricInterpretation
    SamplesPerPixel ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness
    SpacingBetweenSlices RescaleSlope RescaleIntercept WindowCenter WindowWidth
    MagneticFieldStrength PatientName PatientID PatientBirthDate AccessionNumber StudyDate
    InstitutionName ReferringPhysicianName SeriesNumber InstanceNumber SeriesDescription
    ImageType AcquisitionTime
""".split()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("phantom")
    info = generate_phantom(
        out, **SMALL, workers=2, progress=lambda done, total: calls.append((done, total))
    )
    return info, calls


@pytest.fixture(scope="module")
def files(phantom) -> dict[Path, pydicom.Dataset]:
    info, _ = phantom
    return {p: pydicom.dcmread(p) for p in sorted(info.dicom_root.rglob("*.dcm"))}


def _series(files: dict[Path, pydicom.Dataset]) -> dict[tuple[str, str], list]:
    """(PatientID, SeriesDescription) -> [(path, dataset)]."""
    out: dict[tuple[str, str], list] = defaultdict(list)
    for path, ds in files.items():
        out[(ds.PatientID, ds.SeriesDescription)].append((path, ds))
    return out


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def _sorted(items: list) -> list:
    return sorted(items, key=lambda it: float(np.dot(it[1].ImagePositionPatient, _normal(it[1]))))


def _volume(items: list) -> np.ndarray:
    """Real-valued volume in ascending position along the normal (modality LUT applied)."""
    return np.stack(
        [
            ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for _, ds in _sorted(items)
        ]
    )


def _boxes(info) -> list[dict[str, str]]:
    with open(info.boxes_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def test_layout_counts_and_progress(phantom, files) -> None:
    info, calls = phantom
    assert info.dicom_root == info.dicom_root.parent / "dicom"
    assert info.boxes_csv.name == "Annotation_Boxes.csv"
    assert calls == [(i, SMALL["patients"]) for i in range(1, SMALL["patients"] + 1)]
    assert info.patients == 4 and info.lesion_patients == sum(lesion_flags(4, 0.5, 3)) == 2
    assert info.files == len(files) == 4 * (5 + 12 * 5)
    patients = sorted(p.name for p in info.dicom_root.iterdir())
    assert patients == [f"Breast_MRI_{i:03d}" for i in range(1, 5)]
    for patient in info.dicom_root.iterdir():
        (study,) = patient.iterdir()
        assert "MRI BREAST BILATERAL" in study.name
        names = sorted(s.name.split("-", 1)[1].rsplit("-", 1)[0] for s in study.iterdir())
        assert names == sorted(["3-plane loc", "ax t1 non FS", *DCE])
    assert not list(info.dicom_root.parent.glob(".phantom-*"))  # temporary dir cleaned up


def test_every_file_is_a_complete_mr_image(files) -> None:
    for path, ds in files.items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        missing = [tag for tag in REQUIRED if tag not in ds]
        assert not missing, f"{path.name} lacks {missing}"
        assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
        bits = (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation)
        assert bits == (16, 12, 11, 0)
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.PatientID == path.parts[-4] and ds.InstitutionName == "Phantom General Hospital"
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
        assert int(pixels.max()) <= MAX_STORED


def test_series_roles_timing_and_rescale(files) -> None:
    series = _series(files)
    for pid in {pid for pid, _ in series}:
        loc = [ds for _, ds in series[(pid, "3-plane loc")]]
        assert all("LOCALIZER" in ds.ImageType for ds in loc)
        assert any(abs(_normal(ds)[2]) < 0.5 for ds in loc)  # some sagittal/coronal planes
        t1 = [ds for _, ds in series[(pid, "ax t1 non FS")]]
        assert all("TemporalPositionIdentifier" not in ds for ds in t1)
        dce = [[ds for _, ds in series[(pid, name)]] for name in DCE]
        first = [s[0] for s in dce]
        assert [int(ds.TemporalPositionIdentifier) for ds in first] == [1, 2, 3, 4]
        assert all(int(ds.NumberOfTemporalPositions) == 4 for ds in first)
        for key in ("TriggerTime", "AcquisitionTime", "SeriesNumber"):
            values = [float(getattr(ds, key)) for ds in first]
            assert values == sorted(values) and len(set(values)) == 4, key
        assert len({ds.FrameOfReferenceUID for _, ds in files.items() if ds.PatientID == pid}) == 1
        geometry = {
            (
                tuple(ds.ImageOrientationPatient),
                tuple(ds.PixelSpacing),
                tuple(sorted(tuple(d.ImagePositionPatient) for d in s)),
            )
            for s, ds in zip(dce, first, strict=True)
        }
        assert len(geometry) == 1  # all DCE phases share one geometry
    slopes = {float(ds.RescaleSlope) for ds in files.values()}
    assert {1.0, 2.0} <= slopes  # readers must apply the modality LUT


def test_geometry_steps_along_the_normal(files) -> None:
    for (_, name), items in _series(files).items():
        if name == "3-plane loc":
            continue
        ordered = _sorted(items)
        ds = ordered[0][1]
        positions = np.array([np.dot(d.ImagePositionPatient, _normal(ds)) for _, d in ordered])
        assert np.allclose(np.diff(positions), float(ds.SpacingBetweenSlices), atol=1e-3)
        assert np.allclose(_normal(ds), [0, 0, 1])


def test_file_names_and_instance_numbers_do_not_follow_space(files) -> None:
    for (_, name), items in _series(files).items():
        ordered = _sorted(items)
        names = [int(p.stem.split("-")[1]) for p, _ in ordered]
        instances = [int(ds.InstanceNumber) for _, ds in ordered]
        assert sorted(names) == sorted(instances) == list(range(1, len(items) + 1))
        assert names != sorted(names), name
        assert instances != sorted(instances), name


def test_boxes_match_the_images(phantom, files) -> None:
    info, _ = phantom
    with open(info.boxes_csv, newline="") as handle:
        assert next(csv.reader(handle)) == list(BOX_HEADER)
    rows = {row["Patient ID"]: row for row in _boxes(info)}
    flags = lesion_flags(4, 0.5, 3)
    assert sorted(rows) == [f"Breast_MRI_{i + 1:03d}" for i, f in enumerate(flags) if f]
    series = _series(files)
    for pid, row in rows.items():
        pre, post1 = (_volume(series[(pid, name)]) for name in DCE[:2])
        r0, r1, c0, c1, s0, s1 = (int(row[k]) for k in BOX_HEADER[1:])
        assert 1 <= r0 <= r1 <= pre.shape[1] and 1 <= c0 <= c1 <= pre.shape[2]
        assert 1 <= s0 <= s1 <= pre.shape[0]
        sub = post1 - pre
        inside = sub[s0 - 1 : s1, r0 - 1 : r1, c0 - 1 : c1]
        outside = np.ones(sub.shape, bool)
        outside[s0 - 1 : s1, r0 - 1 : r1, c0 - 1 : c1] = False
        tissue = outside & (pre > 0.2 * np.percentile(pre, 99))
        assert inside.max() > 3 * np.median(sub[tissue])
        assert np.percentile(inside, 75) > np.median(sub[tissue])


def test_deterministic_and_seed_dependent(phantom, files, tmp_path: Path) -> None:
    info, _ = phantom
    again = generate_phantom(tmp_path / "again", **SMALL, workers=1)  # serial == parallel
    other = generate_phantom(tmp_path / "other", **{**SMALL, "seed": 4})
    for path, ds in files.items():
        twin = pydicom.dcmread(again.dicom_root / path.relative_to(info.dicom_root))
        assert twin.PixelData == ds.PixelData
        for uid in UIDS:
            assert twin[uid].value == ds[uid].value
    assert again.boxes_csv.read_text() == info.boxes_csv.read_text()
    theirs = [pydicom.dcmread(p) for p in other.dicom_root.rglob("*.dcm")]
    assert not {ds.SOPInstanceUID for ds in files.values()} & {ds.SOPInstanceUID for ds in theirs}
    assert not {ds.PixelData for ds in files.values()} & {ds.PixelData for ds in theirs}


def test_regenerates_over_a_phantom_but_not_over_foreign_data(tmp_path: Path) -> None:
    small = {**SMALL, "patients": 2}
    generate_phantom(tmp_path, **small)
    info = generate_phantom(tmp_path, **small)
    assert info.files == len(list(info.dicom_root.rglob("*.dcm")))
    foreign = tmp_path / "foreign"
    (foreign / "dicom").mkdir(parents=True)
    with pytest.raises(DataError, match="not a phantom"):
        generate_phantom(foreign, **small)
    with pytest.raises(CadError, match="'slices' parameter"):
        generate_phantom(tmp_path / "bad", slices=1)


def test_simulate_patient_in_memory() -> None:
    with_lesion = simulate_patient(1, 12, 48, 3, True)
    without = simulate_patient(0, 12, 48, 3, False)
    assert without.box is None and not without.has_lesion and without.kinetics is None
    assert with_lesion.has_lesion and with_lesion.kinetics in ("persistent", "plateau", "washout")
    for p in (with_lesion, without):
        assert set(p.series) == {"t1", "pre", "post1", "post2", "post3"}
        assert all(v.shape == (12, 48, 48) and v.dtype == np.uint16 for v in p.series.values())
        assert all(int(v.max()) <= MAX_STORED for v in p.series.values())
    assert with_lesion.slope["post1"] == 2.0 and with_lesion.slope["pre"] == 1.0
    assert np.array_equal(with_lesion.real("post1"), with_lesion.series["post1"] * 2.0)
    again = simulate_patient(1, 12, 48, 3, True)
    assert all(np.array_equal(again.series[k], with_lesion.series[k]) for k in again.series)
    assert again.box == with_lesion.box
    assert all(simulate_patient(i, 8, 32, 5, True).box is not None for i in range(4))
