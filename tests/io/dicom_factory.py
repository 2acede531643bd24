"""Small DICOM files written at test time with pydicom (no DICOM is kept in git).

Everything here is synthetic: names and IDs are made up, sizes are tiny. Import it from
tests as ``from dicom_factory import ...`` (pytest puts ``tests/io`` on ``sys.path``; the
conftest of ``tests/data`` adds it there too).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MediaStorageDirectoryStorage,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PATIENT_NAME = "Testperson^Secret"  # tests assert this never shows up in outputs

NATIVE = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}
LOSSLESS = {
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless": JPEGLosslessSV1,
}


def oblique(alpha: float = 0.3, beta: float = 0.2) -> tuple[float, ...]:
    """An orthonormal oblique ImageOrientationPatient (row, column cosines)."""
    ca, sa, cb, sb = np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta)
    return tuple(float(v) for v in (ca, sa, 0.0, -sa * cb, ca * cb, sb))


def normal(orientation: Sequence[float]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(sop_class), UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _patient(ds: Dataset, patient_id: str, study_uid: str) -> None:
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient_id, PATIENT_NAME, "19700101"
    ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber = study_uid, "20200102", "ACC123"


def mr_slice(
    pixels: np.ndarray,
    *,
    patient_id: str = "PAT-001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "ax dyn pre",
    series_number: int = 1,
    instance_number: int = 1,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = AXIAL,
    temporal_id: int | None = None,
    trigger_time: float | None = None,
    acquisition_time: str | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    photometric: str = "MONOCHROME2",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "OTHER"),
    bits_stored: int = 12,
) -> Dataset:
    """A classic MR Image Storage data set holding one uint16/uint8/int16 slice."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(MRImageStorage, sop_uid)
    _patient(ds, patient_id, study_uid or generate_uid())
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop_uid, "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesDescription, ds.SeriesNumber = description, series_number
    ds.InstanceNumber, ds.ImageType = instance_number, list(image_type)
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    if orientation is not None:
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    if position is not None:
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
    optional = {"TemporalPositionIdentifier": temporal_id, "TriggerTime": trigger_time}
    optional |= {"AcquisitionTime": acquisition_time, "RescaleSlope": slope}
    for keyword, value in (optional | {"RescaleIntercept": intercept}).items():
        if value is not None:
            setattr(ds, keyword, value)
    if acquisition_time is not None:
        ds.AcquisitionDate = "20200102"
    _pixels(ds, pixels, photometric, bits_stored)
    return ds


def _pixels(ds: Dataset, pixels: np.ndarray, photometric: str, bits_stored: int) -> None:
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = min(bits_stored, ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def save(ds: Dataset, path: Path, syntax: str = "explicit-le") -> Path:
    """Write ``ds`` with one of NATIVE / LOSSLESS / 'jpeg-baseline' transfer syntaxes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _array(ds)
    if syntax == "explicit-be":
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if syntax in NATIVE:
        ds.file_meta.TransferSyntaxUID = NATIVE[syntax]
    elif syntax == "jpeg-lossless":
        frames = arr.reshape(-1, ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([jpeg_lossless(f, int(ds.BitsStored)) for f in frames])
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif syntax == "jpeg-baseline":
        ds.PixelData = encapsulate([jpeg_baseline(f) for f in arr.reshape(-1, ds.Rows, ds.Columns)])
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        ds.compress(LOSSLESS[syntax], arr)
    if ds.file_meta.TransferSyntaxUID not in NATIVE.values():
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _array(ds: Dataset) -> np.ndarray:
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shape = (frames, ds.Rows, ds.Columns) if frames > 1 else (ds.Rows, ds.Columns)
    return np.frombuffer(ds.PixelData, dtype=dtype).reshape(shape)


def jpeg_baseline(frame: np.ndarray, quality: int = 95) -> bytes:
    """An 8-bit grayscale JPEG baseline stream (lossy) encoded with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(frame.astype(np.uint8), mode="L").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_lossless(frame: np.ndarray, precision: int) -> bytes:
    """A minimal JPEG lossless (process 14, selection value 1) encoder for test data.

    No package here encodes it; the format is small enough: one Huffman table with every
    difference category (0..16) at code length 5, predictor 1 (left; above on column 0).
    """
    img = frame.astype(np.int64)
    rows, cols = img.shape
    pred = np.empty_like(img)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = img[0, :-1]
    pred[1:, 0] = img[:-1, 0]
    pred[1:, 1:] = img[1:, :-1]
    diff = ((img - pred + 32768) % 65536) - 32768  # modulo 2^16, as decoders do
    bits: list[str] = []
    for d in diff.ravel().tolist():
        ssss = 16 if d == -32768 else int(abs(d)).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            extra = d if d > 0 else d + (1 << ssss) - 1
            bits.append(format(extra, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad the last byte with 1-bits
    data = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    dht = bytes([0x00, 0, 0, 0, 0, 17] + [0] * 11 + list(range(17)))  # 17 codes of length 5
    sof = bytes([precision, *rows.to_bytes(2, "big"), *cols.to_bytes(2, "big"), 1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component, table 0, Ss=1 (predictor), Se=0, Al=0
    segments = ((0xC4, dht), (0xC3, sof), (0xDA, sos))
    head = b"".join(bytes([0xFF, m, *(len(b) + 2).to_bytes(2, "big")]) + b for m, b in segments)
    return b"\xff\xd8" + head + data + b"\xff\xd9"


def write_series(
    folder: Path,
    volume: np.ndarray,
    *,
    spacing: float = 2.0,
    origin: Sequence[float] = (-10.0, -12.0, -20.0),
    orientation: Sequence[float] = AXIAL,
    shuffle: bool = True,
    reverse_instances: bool = True,
    syntax: str = "explicit-le",
    series_uid: str | None = None,
    seed: int = 0,
    **tags,
) -> list[Path]:
    """One file per slice; slice k lies at ``origin + k * spacing * normal``.

    File names are shuffled and InstanceNumber runs backwards, so only positions tell the
    true order. Returns the paths in true (ascending along the normal) slice order.
    """
    folder = Path(folder)
    series_uid = series_uid or generate_uid()
    tags.setdefault("study_uid", generate_uid())
    n = normal(orientation)
    names = [f"IM{i:04d}.dcm" for i in range(len(volume))]
    if shuffle:
        random.Random(seed).shuffle(names)
    paths = []
    for k, pixels in enumerate(volume):
        instance = len(volume) - k if reverse_instances else k + 1
        position = np.asarray(origin) + k * spacing * n
        ds = mr_slice(
            pixels,
            series_uid=series_uid,
            position=position,
            orientation=orientation,
            instance_number=instance,
            **tags,
        )
        paths.append(save(ds, folder / names[k], syntax))
    return paths


def write_dce_study(
    study_folder: Path,
    phases: Sequence[np.ndarray],
    *,
    timing: str = "temporal-id",
    descriptions: Sequence[str] | None = None,
    extras: bool = True,
    patient_id: str = "PAT-001",
    study_uid: str | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """A DCE study: one series folder per phase (shuffled names), plus a non-contrast T1 and
    a localizer when ``extras``. ``timing``: 'temporal-id', 'trigger', 'acquisition',
    'description' or 'same' (identical timing, no distinguishing description).
    Returns {"pre": folder, "post1": folder, ..., "t1": folder, "loc": folder}.
    """
    study_folder = Path(study_folder)
    study_uid = study_uid or generate_uid()
    names = ["pre"] + [f"post{i}" for i in range(1, len(phases))]
    ordinals = ["1st", "2nd", "3rd", "4th", "5th", "6th"]
    default = ["ax dyn pre"] + [f"ax dyn {ordinals[i]} pass" for i in range(len(phases) - 1)]
    descriptions = list(descriptions or (["ax dyn"] * len(phases) if timing == "same" else default))
    order = list(range(len(phases)))
    random.Random(seed).shuffle(order)  # series numbers and folders do not give the order
    out = {}
    common = dict(patient_id=patient_id, study_uid=study_uid)
    for rank, index in enumerate(order):
        tags: dict = dict(common, description=descriptions[index], series_number=10 + rank)
        if timing == "temporal-id":
            tags["temporal_id"] = index + 1
        elif timing == "trigger":
            tags["trigger_time"] = 60000.0 * index + 1.0
        elif timing == "acquisition":
            tags["acquisition_time"] = f"1201{10 + index:02d}.000"
        elif timing == "same":
            tags["acquisition_time"] = "120100.000"
        folder = study_folder / f"series{rank:02d}"
        write_series(folder, phases[index], seed=seed + index, **tags)
        out[names[index]] = folder
    if extras:
        shape = phases[0].shape
        t1 = np.full(shape, 100, np.uint16)
        out["t1"] = study_folder / "series90"
        write_series(out["t1"], t1, description="ax t1 non FS", series_number=2, **common)
        out["loc"], loc_uid = study_folder / "series91", generate_uid()
        loc = np.full((1, *shape[1:]), 50, np.uint16)
        for i, plane in enumerate([AXIAL, (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)]):
            write_series(  # a 3-plane localizer: one series, three orientations
                out["loc"] / str(i), loc, orientation=plane, description="3 plane loc",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1,
                series_uid=loc_uid, **common,
            )  # fmt: skip
    return out


def enhanced_mr(
    path: Path,
    frames: np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    temporal_ids: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
    orientation: Sequence[float] = AXIAL,
    patient_id: str = "PAT-002",
    syntax: str = "explicit-le",
) -> Path:
    """A multi-frame Enhanced MR file with per-frame position, temporal index and rescale."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(EnhancedMRImageStorage, sop_uid)
    _patient(ds, patient_id, generate_uid())
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = EnhancedMRImageStorage, sop_uid, "MR"
    ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = generate_uid(), "dce mph", 5
    ds.InstanceNumber, ds.ImageType = 1, ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = list(orientation)
    shared.PlaneOrientationSequence = DicomSequence([orient])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i in range(len(frames)):
        item, pos, content = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in positions[i]]
        item.PlanePositionSequence = DicomSequence([pos])
        if temporal_ids is not None:
            content.TemporalPositionIndex = int(temporal_ids[i])
        item.FrameContentSequence = DicomSequence([content])
        if slopes is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept = slopes[i], intercepts[i]
            pvt.RescaleType = "US"
            item.PixelValueTransformationSequence = DicomSequence([pvt])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _pixels(ds, frames, "MONOCHROME2", 12)
    return save(ds, path, syntax)


def sr_document(path: Path) -> Path:
    """A Basic Text SR: valid DICOM, no pixel data."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(BasicTextSRStorage, sop_uid)
    _patient(ds, "PAT-001", generate_uid())
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = BasicTextSRStorage, sop_uid, "SR"
    ds.SeriesInstanceUID, ds.ValueType = generate_uid(), "CONTAINER"
    ds.ContentSequence = DicomSequence([])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def dicomdir(path: Path) -> Path:
    """A minimal DICOMDIR (Media Storage Directory Storage)."""
    ds = Dataset()
    ds.file_meta = _meta(MediaStorageDirectoryStorage, generate_uid())
    ds.FileSetID = "TESTSET"
    ds.DirectoryRecordSequence = DicomSequence([])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def with_transfer_syntax(src: Path, dst: Path, uid: str) -> Path:
    """Copy a file claiming another (e.g. unknown) transfer syntax, pixels encapsulated.

    pydicom refuses to write a syntax it does not know, so the file is written with a known
    encapsulated syntax whose UID has the same padded length, then that UID is patched.
    """
    import pydicom

    placeholders = {
        24: "1.2.840.10008.1.2.4.201",
        22: "1.2.840.10008.1.2.4.90",
        20: "1.2.840.10008.1.2.5",
    }
    padded = len(uid) + len(uid) % 2
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = UID(placeholders[padded])
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(dst, enforce_file_format=True)
    old = placeholders[padded].encode().ljust(padded, b"\0")
    data = Path(dst).read_bytes()
    assert data.count(old) == 1
    Path(dst).write_bytes(data.replace(old, uid.encode().ljust(padded, b"\0")))
    return Path(dst)


def truncated_copy(src: Path, dst: Path, drop: int) -> Path:
    """Copy ``src`` without its last ``drop`` bytes."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:-drop])
    return Path(dst)
