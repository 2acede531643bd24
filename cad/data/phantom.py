"""The built-in breast DCE-MRI phantom, written as a TCIA download of Duke-Breast-Cancer-MRI.

With no real data the whole pipeline runs on this, through the same code paths real data
takes: DICOM files on disk and an ``Annotation_Boxes.csv``. Layout::

    out_dir/dicom/Breast_MRI_001/01-23-2004-NA-MRI BREAST BILATERAL-48213/
        1.000000-3-plane loc-10392/1-03.dcm ...   LOCALIZER, sagittal/coronal/axial
        2.000000-ax t1 non FS-55120/1-17.dcm ...  non fat-sat T1, no temporal position
        3.000000-ax dyn pre-91822/...              DCE, TemporalPositionIdentifier 1
        4.000000-ax dyn 1st pass-.../ ... 6.000000-ax dyn 3rd pass-.../  (2, 3, 4)
    out_dir/Annotation_Boxes.csv
    out_dir/phantom.json                           generation parameters and counts

File names and InstanceNumbers deliberately do not follow the spatial order, so readers
must sort by ImagePositionPatient projected on the slice normal (the cross product of the
two ImageOrientationPatient vectors). Post-contrast series may carry RescaleSlope 2, so
readers must apply the modality LUT before subtracting phases. Identities are fake
(``PHANTOM^<name>``) but shaped like PHI so that pseudonymisation is exercised.

``Annotation_Boxes.csv`` follows Duke: ``Patient ID,Start Row,End Row,Start Column,End
Column,Start Slice,End Slice``, one row per lesion patient, all 1-based and inclusive.
Rows and columns index the DCE image matrix; slices index the DCE volume sorted by
ascending position along the slice normal (here: inferior to superior). Patients without
a lesion have no row. Everything is deterministic in the arguments, UIDs included.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from scipy import ndimage

from cad.artifacts.archive import PhantomArchive
from cad.data.phantom_anatomy import MAX_STORED, SimulatedPatient, lesion_flags, simulate_patient
from cad.errors import CadError, DataError
from cad.io.pool import WorkerPool

BOX_HEADER = tuple(
    "Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice".split(",")
)
STUDY_DESCRIPTION = "MRI BREAST BILATERAL"
INSTITUTION = "Phantom General Hospital"
# series key -> (SeriesNumber, SeriesDescription, TemporalPositionIdentifier)
SERIES_INFO = {
    "loc": (1, "3-plane loc", None),
    "t1": (2, "ax t1 non FS", None),
    "pre": (3, "ax dyn pre", 1),
    "post1": (4, "ax dyn 1st pass", 2),
    "post2": (5, "ax dyn 2nd pass", 3),
    "post3": (6, "ax dyn 3rd pass", 4),
}
_GIVEN = "ADA BEATRIX CLARA DORA EDITH FLORA GRETA HILDA IRIS JUNE KAREN LENA MAUD NORA".split()
_DOCTORS = ("ABBOTT^ANN", "BERG^OLE", "CHEN^LI", "DIALLO^AWA", "EVANS^TOM", "FISCHER^EVA")
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class PhantomInfo:
    """Where a generated phantom lives and what it holds."""

    dicom_root: Path
    boxes_csv: Path
    patients: int
    lesion_patients: int
    files: int
    slices: int
    size: int
    seed: int


def patient_id(index: int) -> str:
    """Duke-style PatientID of the ``index``-th (0-based) phantom patient."""
    return f"Breast_MRI_{index + 1:03d}"


def _ds(value: float) -> str:
    """Decimal string short enough for DICOM DS (16 chars)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}.{int(seconds % 1 * 1e6):06d}"


def _date(rng: np.random.Generator, first_year: int, last_year: int) -> str:
    return (
        f"{rng.integers(first_year, last_year)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    )


def _order(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation of 0..n-1 that is not ascending: reversed or shuffled."""
    perm = np.arange(n)[::-1].copy() if rng.random() < 0.5 else rng.permutation(n)
    if n > 1 and np.all(np.diff(perm) > 0):
        perm = perm[::-1].copy()
    return perm


class _Writer:
    """Writes one simulated patient as one study of six series."""

    def __init__(self, root: Path, sim: SimulatedPatient, seed: int, key: list[str]) -> None:
        self.sim = sim
        self.key = key
        self.rng = np.random.default_rng([seed, sim.index, 0x1D])
        rng = self.rng
        self.pid = patient_id(sim.index)
        self.study_date = _date(rng, 2000, 2016)
        self.start = float(rng.uniform(8, 17) * 3600)
        self.dyn_step = float(rng.uniform(90, 150))
        self.field = float(rng.choice([1.5, 3.0]))
        self.offset = np.round(rng.uniform([-10, -10, -60], [10, 10, 60]), 1)
        self.files = 0
        d = self.study_date
        folder = f"{d[4:6]}-{d[6:]}-{d[:4]}-NA-{STUDY_DESCRIPTION}-{rng.integers(10000, 99999)}"
        self.study_dir = root / self.pid / folder
        self.identity = {
            "PatientName": f"PHANTOM^{_GIVEN[rng.integers(len(_GIVEN))]}",
            "PatientID": self.pid,
            "PatientBirthDate": _date(rng, 1935, 1985),
            "PatientSex": "F",
            "AccessionNumber": f"PH{rng.integers(10**6, 10**7)}",
            "ReferringPhysicianName": _DOCTORS[rng.integers(len(_DOCTORS))],
            "InstitutionName": INSTITUTION,
        }
        self.study_uid = self.uid("study")
        self.frame_uid = self.uid("frame")

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=[*self.key, str(self.sim.index), *map(str, parts)])

    def base(self, series: str, acq_seconds: float) -> Dataset:
        """Tags shared by every image of one series."""
        number, description, temporal = SERIES_INFO[series]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if series == "loc" else "M", "ND"]
        ds.SOPClassUID = MRImageStorage
        for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(ds, tag, self.study_date)
        ds.StudyTime = _time(self.start)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(acq_seconds)
        ds.Modality = "MR"
        ds.Manufacturer = "CAD PHANTOM"
        ds.ManufacturerModelName = "cad.data.phantom"
        for tag, value in self.identity.items():
            setattr(ds, tag, value)
        ds.StudyDescription = STUDY_DESCRIPTION
        ds.SeriesDescription = description
        ds.BodyPartExamined = "BREAST"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = "FS" if temporal else ""
        ds.MRAcquisitionType = "2D" if series == "loc" else "3D"
        ds.RepetitionTime = "4.5" if temporal else "6.8"
        ds.EchoTime = "2.2" if temporal else "2.6"
        ds.FlipAngle = "10" if temporal else "15"
        ds.MagneticFieldStrength = _ds(self.field)
        ds.PatientPosition = "FFP"
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.uid(series, "series")
        ds.FrameOfReferenceUID = self.frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = number
        ds.AcquisitionNumber = 1
        if temporal:
            ds.TemporalPositionIdentifier = temporal
            ds.NumberOfTemporalPositions = 4
            ds.TriggerTime = _ds(round((temporal - 1) * self.dyn_step * 1000.0))
            if temporal > 1:
                ds.ContrastBolusAgent = "GADOLINIUM"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        return ds

    def write(self, series: str, images: np.ndarray, planes: list, acq_seconds: float) -> None:
        """Write ``images`` (n, rows, cols stored values) as one series in shuffled files.

        ``planes`` holds (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) per
        image; the modality LUT is the simulated one (identity for the localizer).
        """
        number, description, _ = SERIES_INFO[series]
        folder = f"{number}.000000-{description}-{self.rng.integers(10000, 99999)}"
        path = self.study_dir / folder
        path.mkdir(parents=True, exist_ok=True)
        ds = self.base(series, acq_seconds)
        slope, intercept = self.sim.slope.get(series, 1.0), self.sim.intercept.get(series, 0.0)
        real = images.astype(np.float32) * slope + intercept
        lo, hi = np.percentile(real, (1, 99))
        ds.WindowCenter, ds.WindowWidth = _ds(round((lo + hi) / 2)), _ds(max(round(hi - lo), 1))
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.Rows, ds.Columns = images.shape[1:]
        thickness = self.sim.slice_spacing if series != "loc" else 10.0
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thickness)
        n = len(images)
        names, instances = _order(self.rng, n), _order(self.rng, n)
        for k in range(n):
            sop = self.uid(series, k)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = int(instances[k]) + 1
            position, orientation, spacing = planes[k]
            ds.ImagePositionPatient = [_ds(c) for c in position]
            ds.ImageOrientationPatient = [_ds(c) for c in orientation]
            ds.PixelSpacing = [_ds(s) for s in spacing]
            if orientation == _AXIAL:
                ds.SliceLocation = _ds(position[2])
            elif "SliceLocation" in ds:
                del ds.SliceLocation
            ds.PixelData = images[k].astype("<u2").tobytes()
            ds.save_as(path / f"1-{names[k] + 1:02d}.dcm", enforce_file_format=True)
        self.files += n

    def write_all(self) -> int:
        """Localizer, T1 and the four DCE series; returns the number of files."""
        sim = self.sim
        slices, size = sim.series["pre"].shape[:2]
        px, dz = sim.pixel_spacing, sim.slice_spacing
        x0 = -(size - 1) / 2 * px + self.offset[0]
        y0 = -(size - 1) / 2 * px + self.offset[1]
        z = [(k - (slices - 1) / 2) * dz + self.offset[2] for k in range(slices)]
        axial = [((x0, y0, zk), _AXIAL, (px, px)) for zk in z]
        self.write_localizer(x0, y0, z)
        self.write("t1", sim.series["t1"], axial, self.start + 120)
        for t, name in enumerate(("pre", "post1", "post2", "post3")):
            self.write(name, sim.series[name], axial, self.start + 420 + t * self.dyn_step)
        return self.files

    def write_localizer(self, x0: float, y0: float, z: list[float]) -> None:
        """Two sagittal, two coronal and one axial low-contrast scout from the T1 volume."""
        t1 = self.sim.series["t1"].astype(np.float32)
        slices, size = t1.shape[:2]
        px = self.sim.pixel_spacing
        row_step = (z[-1] - z[0]) / (size - 1)
        down = (0.0, 0.0, -1.0)
        images, planes = [], []
        for col in (int(size * 0.3), int(size * 0.7)):  # sagittal
            images.append(t1[::-1, :, col])
            planes.append(((x0 + col * px, y0, z[-1]), (0.0, 1.0, 0.0, *down), (row_step, px)))
        for row in (int(size * 0.35), int(size * 0.5)):  # coronal
            images.append(t1[::-1, row, :])
            planes.append(((x0, y0 + row * px, z[-1]), (1.0, 0.0, 0.0, *down), (row_step, px)))
        images = [ndimage.zoom(img, (size / slices, 1.0), order=1) for img in images]
        images.append(t1[slices // 2])
        planes.append(((x0, y0, z[slices // 2]), _AXIAL, (px, px)))
        stack = np.clip(np.rint(np.stack(images)), 0, MAX_STORED).astype(np.uint16)
        self.write("loc", stack, planes, self.start)


def _check(name: str, value: object, ok: bool, what: str) -> None:
    if not ok:
        raise CadError(
            f"The '{name}' parameter of generate_phantom must be {what}. Got {value!r} instead."
        )


def _write_patient(task: tuple) -> tuple[int, tuple | None]:
    """Simulate and write one patient; (files written, its Annotation_Boxes row or None)."""
    root, index, has_lesion, slices, size, seed, key = task
    sim = simulate_patient(index, slices, size, seed, has_lesion)
    files = _Writer(root, sim, seed, key).write_all()
    row = (patient_id(index), *asdict(sim.box).values()) if sim.box is not None else None
    return files, row


def _patient_results(tasks: list[tuple], workers: int) -> Iterator[tuple[int, tuple | None]]:
    """``_write_patient`` over ``tasks`` in order; in worker processes when ``workers > 1``
    (every patient has its own seeded generators, so the files do not depend on this)."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_write_patient, tasks)
        return
    with WorkerPool(min(workers, len(tasks)), preload=("cad.data.phantom",)) as pool:
        yield from pool.imap(_write_patient, ((task,) for task in tasks))


def generate_phantom(
    out_dir: str | Path,
    patients: int = 36,
    slices: int = 24,
    size: int = 128,
    seed: int = 7,
    lesion_fraction: float = 0.6,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> PhantomInfo:
    """Write the phantom under ``out_dir`` (dicom/, Annotation_Boxes.csv, phantom.json).

    The DICOM tree is built in a temporary directory and moved into place at the end, so
    an interrupted run leaves no half phantom. An existing phantom in ``out_dir`` is
    replaced; any other existing ``dicom/`` folder is refused. ``progress(done, total)``
    is called after each patient. Patients are simulated in ``workers`` processes
    (default: one per CPU); the output is the same for any number.
    """
    _check("patients", patients, isinstance(patients, int) and patients >= 1, "an int >= 1")
    _check("slices", slices, isinstance(slices, int) and slices >= 4, "an int >= 4")
    _check("size", size, isinstance(size, int) and size >= 16, "an int >= 16")
    _check("lesion_fraction", lesion_fraction, 0.0 <= lesion_fraction <= 1.0, "a float in [0, 1]")
    out = Path(out_dir)
    layout = PhantomArchive
    dicom_root, boxes_csv = out / layout.DICOM_DIR, out / layout.BOXES_CSV
    marker = out / layout.INFO
    if dicom_root.exists() and not marker.exists():
        raise DataError(
            f"{dicom_root} exists and is not a phantom written by cad; "
            "choose another out_dir or remove it"
        )
    out.mkdir(parents=True, exist_ok=True)
    key = ["cad-phantom", str(seed), str(patients), str(slices), str(size), repr(lesion_fraction)]
    tmp = Path(tempfile.mkdtemp(prefix=".phantom-", dir=out))
    try:
        rows, files = [], 0
        flags = lesion_flags(patients, lesion_fraction, seed)
        tasks = [
            (tmp / layout.DICOM_DIR, i, flag, slices, size, seed, key)
            for i, flag in enumerate(flags)
        ]
        workers = (os.cpu_count() or 1) if workers is None else workers
        for index, (written, row) in enumerate(_patient_results(tasks, workers)):
            files += written
            if row is not None:
                rows.append(row)
            if progress is not None:
                progress(index + 1, patients)
        with open(tmp / boxes_csv.name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(BOX_HEADER)
            writer.writerows(rows)
        marker.unlink(missing_ok=True)
        if dicom_root.exists():
            shutil.rmtree(dicom_root)
        os.replace(tmp / layout.DICOM_DIR, dicom_root)
        os.replace(tmp / boxes_csv.name, boxes_csv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = PhantomInfo(dicom_root, boxes_csv, patients, len(rows), files, slices, size, seed)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(info).items()}
    summary.update(
        lesion_fraction=lesion_fraction, dicom_root=layout.DICOM_DIR, boxes_csv=boxes_csv.name
    )
    marker.write_text(json.dumps(summary, indent=2) + "\n")
    return info
