"""Fixtures for ``cad score`` tests: a tiny random-weight model package and a phantom
export mixed with bad files of every typed kind (all written into tmp dirs)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    MPEG2MPML,
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    RLELossless,
    generate_uid,
)
from safetensors.torch import save_model
from score_helpers import PATIENTS, SECRET, SIZE, SLICES, make_model, package_meta

from cad.data.phantom import generate_phantom
from cad.finetune.package import save_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))  # dicom_factory


@pytest.fixture(autouse=True)
def _secret_and_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fixed pseudonym secret; the cwd is tmp (mlflow.db, .cad_secret land there)."""
    monkeypatch.setenv("CAD_SECRET", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory):
    """``make(threshold) -> package dir``: the same random weights, any threshold."""
    model = make_model()
    root = tmp_path_factory.mktemp("packages")

    def make(threshold: float = 0.5, denoiser: bool = False) -> Path:
        directory = root / f"model-{threshold:.6f}{'-dncnn' if denoiser else ''}"
        if directory.exists():
            return directory
        meta, weights = package_meta(threshold), None
        if denoiser:  # a package trained on DnCNN-denoised slices ships the denoiser
            from cad.artifacts.model_package import DenoiserSpec
            from cad.backbones.dncnn import DnCNN

            torch.manual_seed(1)
            spec = DenoiserSpec(in_chans=3, depth=3, features=8, sigma=0.05)
            meta = meta.model_copy(update={"denoiser": spec})
            weights = root / "dncnn.safetensors"
            dncnn = DnCNN(3, 3, 8).eval()
            torch.nn.init.normal_(dncnn.body[-1].weight, std=0.05)  # not the identity
            save_model(dncnn, str(weights))
        save_package(model, meta, directory, denoiser=weights)
        return directory

    return make


@pytest.fixture(scope="session")
def package(model_factory) -> Path:
    return model_factory(0.5)


@dataclass
class Baseline:
    """One uninterrupted run over the export that several tests read."""

    out: Path
    key_map: Path
    summary: object
    options: dict


@pytest.fixture(scope="session")
def baseline(export, package, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    from cad.scoring.api import score_folder

    mp = pytest.MonkeyPatch()
    mp.setenv("CAD_SECRET", SECRET)
    directory = tmp_path_factory.mktemp("baseline")
    options = dict(level="patient", batch_size=8, workers=0, progress=False)
    try:
        summary = score_folder(
            package, export.root, directory / "p.csv", key_map=directory / "keys.csv", **options
        )
    finally:
        mp.undo()
    return Baseline(directory / "p.csv", directory / "keys.csv", summary, options)


@dataclass
class Export:
    """The mixed test export and what the tests expect of it."""

    root: Path
    bad: dict[Path, str] = field(default_factory=dict)  # bad file -> expected outcome
    missing_phase_files: list[Path] = field(default_factory=list)
    scored_studies: list[str] = field(default_factory=list)  # StudyInstanceUIDs
    compressed: Path | None = None
    phi: set[str] = field(default_factory=set)  # strings that must never leave the input


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _series_dirs(study: Path, *words: str) -> list[Path]:
    return [d for d in sorted(study.iterdir()) if any(w in d.name for w in words)]


def _non_image(path: Path, sop_class: str, **elements: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _collect_phi(export: Export) -> None:
    for path in _files(export.root):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - bad files are bad on purpose
            continue
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "StudyDate",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "ReferringPhysicianName",
            "InstitutionName",
        ):
            value = str(ds.get(keyword) or "")
            if len(value) >= 6:
                export.phi.add(value)
    export.phi.add(str(export.root))
    for path in export.root.rglob("*"):
        if path.is_dir() and path.parent != export.root.parent:
            export.phi.add(path.name)  # patient/study/series folders carry IDs and dates
    export.phi -= {"extra", "nested", "deeper"}  # the test's own folders


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    """4 phantom patients (3 scorable, 1 without post-contrast series) + bad files."""
    base = tmp_path_factory.mktemp("export")
    info = generate_phantom(base / "phantom", patients=PATIENTS, slices=SLICES, size=SIZE, seed=1)
    root = info.dicom_root
    export = Export(root)
    patients = sorted(d for d in root.iterdir() if d.is_dir())
    for patient in patients[:-1]:
        study = next(patient.iterdir())
        pre = _files(_series_dirs(study, "dyn pre")[0])
        export.scored_studies.append(str(pydicom.dcmread(pre[0]).StudyInstanceUID))
    # the last patient: no post-contrast series -> every file of the study is an error
    last_study = next(patients[-1].iterdir())
    for series in _series_dirs(last_study, "pass"):
        shutil.rmtree(series)
    export.missing_phase_files = _files(last_study)

    good_pre = _files(_series_dirs(next(patients[0].iterdir()), "dyn pre")[0])
    # a compressed slice that must still be scored (RLE Lossless, in place)
    ds = pydicom.dcmread(good_pre[3])
    ds.compress(RLELossless)
    ds.save_as(good_pre[3])
    export.compressed = good_pre[3]

    nested = root / "extra" / "nested" / "deeper"
    nested.mkdir(parents=True)
    (nested / "notes.txt").write_text("export notes, not DICOM\n")
    export.bad[nested / "notes.txt"] = "not-dicom"
    data = good_pre[0].read_bytes()
    (nested / "truncated.dcm").write_bytes(data[: len(data) - 700])
    export.bad[nested / "truncated.dcm"] = "corrupt"
    report = _non_image(
        root / "extra" / "report.dcm",
        BasicTextSRStorage,
        SOPClassUID=BasicTextSRStorage,
        SOPInstanceUID=generate_uid(),
        Modality="SR",
        PatientID="Breast_MRI_001",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        ValueType="CONTAINER",
        ContentSequence=DicomSequence([]),
    )
    export.bad[report] = "not-an-image"  # an SR document: DICOM without pixels
    export.bad[
        _non_image(
            root / "DICOMDIR",
            MediaStorageDirectoryStorage,
            FileSetID="EXPORT",
            DirectoryRecordSequence=DicomSequence([]),
        )
    ] = "not-an-image"
    ds = pydicom.dcmread(good_pre[1])  # a codec no decoder supports (MPEG-2)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(nested / "mpeg2.dcm", enforce_file_format=True)
    export.bad[nested / "mpeg2.dcm"] = "unsupported-codec"
    ds = pydicom.dcmread(good_pre[2])  # no slice position: cannot be placed in a volume
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.ImagePositionPatient
    ds.save_as(nested / "no_position.dcm", enforce_file_format=True)
    export.bad[nested / "no_position.dcm"] = "ambiguous-geometry"
    _collect_phi(export)
    return export
