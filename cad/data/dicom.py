"""Per-file DICOM reading: a typed outcome for every file, header records, pixel decoding.

``read_header`` is the fast pass (no decode): it tells not-DICOM, non-image, unsupported
codec, truncated and geometry-less files from usable images. ``decode`` returns float32
frames with the modality LUT applied. Reasons are PHI-free: no path, name, ID, date or UID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from cad.errors import DataError

logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # failures become outcomes instead
PARALLEL_MIN_FILES = 1000  # below this, starting worker processes costs more than it saves


class Outcome(StrEnum):
    OK = "ok"
    NOT_DICOM = "not-dicom"
    NOT_AN_IMAGE = "not-an-image"
    UNSUPPORTED_CODEC = "unsupported-codec"
    CORRUPT = "corrupt"
    AMBIGUOUS_GEOMETRY = "ambiguous-geometry"
    AMBIGUOUS_PHASE = "ambiguous-phase"


class DecodeError(DataError):
    """The pixel data of one file cannot be used; ``outcome`` says how, ``reason`` why."""

    outcome = Outcome.CORRUPT
    reason = property(lambda self: str(self))


class CodecError(DecodeError):
    outcome = Outcome.UNSUPPORTED_CODEC


class CorruptError(DecodeError):
    outcome = Outcome.CORRUPT


@dataclass
class FileRecord:
    """Header facts of one input file. ``path`` and the raw identifiers stay internal."""

    path: Path
    outcome: Outcome = Outcome.OK
    reason: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    image_type: tuple[str, ...] = ()
    transfer_syntax: str = ""
    orientation: tuple[float, ...] | None = None  # 6 direction cosines (row, column)
    positions: list[tuple[float, float, float]] = field(default_factory=list)  # per frame
    temporal_ids: list[int | None] = field(default_factory=list)  # per frame
    trigger_times: list[float | None] = field(default_factory=list)  # per frame, ms
    acquisition_times: list[float | None] = field(default_factory=list)  # per frame, s
    rows: int = 0
    columns: int = 0
    frames: int = 1

    def fail(self, outcome: Outcome, reason: str) -> FileRecord:
        self.outcome, self.reason = outcome, reason
        return self


# SOP classes that never carry an image we can use, by UID prefix (checked first).
_NON_IMAGE = {
    "1.2.840.10008.1.3.10": "media storage directory (DICOMDIR)",
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation or registration object",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy object",
}
_IMPLICIT, _EXPLICIT, _BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = {_IMPLICIT, _EXPLICIT, _BIG, _DEFLATED}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_TEXT = {"patient_id": "PatientID", "study_uid": "StudyInstanceUID", "modality": "Modality"}
_TEXT |= {"series_uid": "SeriesInstanceUID", "sop_uid": "SOPInstanceUID"}
_TEXT |= {"series_description": "SeriesDescription"}
_IMAGE_ELEMENTS = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
_NAMES = {"1.2.840.10008.1.2.4.110": "JPEG XL Lossless", "1.2.840.10008.1.2.4.112": "JPEG XL"}


def _uid_name(uid: str, kind: str) -> str:
    name = _NAMES.get(uid) or (UID(uid).name if uid else "")
    return f"unrecognised {kind}" if not name or name == uid else f"{kind} {name}"


def _safe(message: object) -> str:
    """First line of an exception message with paths and UIDs removed (PHI-free)."""
    text = re.sub(r"\S*[/\\]\S*", "<path>", (str(message).splitlines() or [""])[0])
    return re.sub(r"\d+(\.\d+){3,}", "<uid>", text)[:100]


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _int(value: Any) -> int | None:
    return None if (number := _float(value)) is None else int(number)


def _seconds(date: Any, time: Any) -> float | None:
    """DICOM DA (optional) + TM as seconds: an internal ordering key, never written out."""
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?", str(time or "").strip())
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    secs = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0) + float(frac or 0)
    day = str(date or "").strip()
    if re.fullmatch(r"\d{8}", day):
        with contextlib.suppress(ValueError):
            secs += dt.date(int(day[:4]), int(day[4:6]), int(day[6:])).toordinal() * 86400.0
    return secs


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def _lookup(frame: Dataset | None, shared: Dataset | None, ds: Dataset, seq: str, kw: str):
    """An attribute from the per-frame group, else the shared group, else the top level."""
    for item in (_item(frame, seq), _item(shared, seq)):
        if item is not None and kw in item:
            return item.get(kw)
    return ds.get(kw)


def _numbers(value: Any, n: int, name: str) -> tuple[float, ...] | str:
    """``n`` finite numbers, or a PHI-free problem description."""
    if value is None:
        return f"{name} missing"
    out = [] if isinstance(value, str | bytes) else [_float(v) for v in value]
    return tuple(out) if len(out) == n and None not in out else f"{name} is not {n} numbers"


def _geometry(rec: FileRecord, ds: Dataset) -> str:
    """Fill orientation, positions and timing per frame; return a problem or ''."""
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames: list[Dataset | None] = per_frame or [None] * rec.frames
    if len(frames) != rec.frames:
        return "per-frame functional groups do not match NumberOfFrames"
    orients, problems = set(), []
    for frame in frames:
        iop = _lookup(frame, shared, ds, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = _lookup(frame, shared, ds, "PlanePositionSequence", "ImagePositionPatient")
        iop = _numbers(iop, 6, "ImageOrientationPatient")
        ipp = _numbers(ipp, 3, "ImagePositionPatient")
        problems += [v for v in (iop, ipp) if isinstance(v, str)]
        if not isinstance(iop, str):
            orients.add(tuple(round(v, 4) for v in iop))
        if not isinstance(ipp, str):
            rec.positions.append(ipp)  # type: ignore[arg-type]
        content = _item(frame, "FrameContentSequence") or Dataset()
        rec.temporal_ids.append(
            _int(content.get("TemporalPositionIndex", ds.get("TemporalPositionIdentifier")))
        )
        kw = "TemporalPositionTimeOffset"
        offset = _lookup(frame, shared, ds, "TemporalPositionSequence", kw)
        rec.trigger_times.append(_float(offset if offset is not None else ds.get("TriggerTime")))
        stamp = str(content.get("FrameAcquisitionDateTime") or ds.get("AcquisitionDateTime") or "")
        day, time = (stamp[:8], stamp[8:]) if stamp else (ds.get("AcquisitionDate"), None)
        rec.acquisition_times.append(_seconds(day, time or ds.get("AcquisitionTime")))
    if problems or len(orients) != 1:
        return problems[0] if problems else "frames of one file have different orientations"
    row, col = np.array(orients.pop()).reshape(2, 3)
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1)) > 1e-2:
        return "ImageOrientationPatient cosines are not unit vectors"
    if abs(float(row @ col)) > 1e-2:
        return "ImageOrientationPatient row and column are not orthogonal"
    rec.orientation = tuple(float(v) for v in (*row, *col))
    return ""


def _probe_pixels(fp, ds: Dataset, size: int, expected: int, native: bool) -> tuple[bool, str]:
    """(present, problem) of the pixel data element after a stop-before-pixels read; seeks only."""
    implicit, little = ds.original_encoding
    order, head = "<" if little else ">", fp.read(8)
    group, elem = struct.unpack(order + "HH", head[:4]) if len(head) == 8 else (0, 0)
    if (group << 16 | elem) not in _PIXEL_TAGS:
        return False, ""
    extra = head[4:8] if implicit else fp.read(4)
    if len(extra) < 4:
        return True, f"pixel data truncated: 0 of {expected} bytes"
    (length,) = struct.unpack(order + "L", extra)
    if (length == 0xFFFFFFFF) == native:
        return True, "pixel data encapsulation does not match the transfer syntax"
    fragments = 0
    while length == 0xFFFFFFFF:  # encapsulated: walk the items by seeking
        item = fp.read(8)
        if len(item) < 8:
            return True, f"encapsulated pixel data truncated after {fragments} items"
        group, elem, item_len = struct.unpack("<HHL", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return True, "" if fragments > 1 else "encapsulated pixel data has no frames"
        if (group, elem) != (0xFFFE, 0xE000):
            return True, "encapsulated pixel data is malformed"
        if fp.tell() + item_len > size:
            return True, f"encapsulated pixel data truncated in item {fragments + 1}"
        fp.seek(item_len, os.SEEK_CUR)
        fragments += 1
    available = max(size - fp.tell(), 0)
    if length < expected:
        return True, f"pixel data length does not match: {length} of {expected} bytes"
    if available < expected:
        return True, f"pixel data truncated: {available} of {expected} bytes"
    return True, ""


def _transfer_syntax(ds: Dataset) -> str:
    ts = (getattr(ds, "file_meta", None) or Dataset()).get("TransferSyntaxUID")
    implicit, little = ds.original_encoding
    return str(ts) if ts else _IMPLICIT if implicit else _EXPLICIT if little else _BIG


def _codec_problem(ts: str) -> str:
    name = _uid_name(ts, "transfer syntax")  # PHI-free: standard names only
    try:
        decoder = get_decoder(UID(ts))
    except (NotImplementedError, ValueError):
        return f"{name} has no decoder in pydicom"
    return "" if decoder.is_available else f"{name}: decoder plugin not installed"


def read_header(path: Path) -> FileRecord:
    """Classify one file from its header (no pixel decode) and record what grouping needs."""
    rec = FileRecord(path=Path(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every odd value; outcomes say it
        try:
            with rec.path.open("rb") as fp:
                return _read(rec, fp, os.fstat(fp.fileno()).st_size)
        except OSError as exc:
            return rec.fail(Outcome.CORRUPT, f"file cannot be read ({type(exc).__name__})")
        except Exception as exc:  # noqa: BLE001 - malformed values surface lazily
            return rec.fail(Outcome.CORRUPT, f"header value malformed ({_safe(exc)})")


def _read(rec: FileRecord, fp, size: int) -> FileRecord:
    head = fp.read(132)
    preamble = len(head) == 132 and head[128:132] == b"DICM"
    raw = len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00")  # data set, no preamble
    if not (preamble or raw):
        return rec.fail(Outcome.NOT_DICOM, "empty file" if not head else "no DICOM preamble")
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a finding
        if isinstance(exc, InvalidDicomError) or not preamble:
            return rec.fail(Outcome.NOT_DICOM, "no DICOM preamble and not parseable")
        return rec.fail(Outcome.CORRUPT, f"header cannot be parsed ({type(exc).__name__})")
    if not preamble and "SOPClassUID" not in ds and "Rows" not in ds:
        return rec.fail(Outcome.NOT_DICOM, "no DICOM preamble and not a DICOM data set")
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    for attr, keyword in _TEXT.items():
        setattr(rec, attr, str(ds.get(keyword) or ""))
    rec.series_number = _int(ds.get("SeriesNumber"))
    rec.instance_number = _int(ds.get("InstanceNumber"))
    rec.image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    rec.transfer_syntax = _transfer_syntax(ds)
    what = _uid_name(sop, "SOP class")
    # An image SOP class without image elements / pixel data is broken, anything else is
    # simply not an image.
    lacking = Outcome.CORRUPT if "Image Storage" in what else Outcome.NOT_AN_IMAGE
    for prefix, kind in _NON_IMAGE.items():
        if sop.startswith(prefix):
            return rec.fail(Outcome.NOT_AN_IMAGE, f"{what}: a {kind}, not an image")
    missing = [k for k in _IMAGE_ELEMENTS if ds.get(k) in (None, "")]
    if missing:
        return rec.fail(lacking, f"{what} lacks image elements {', '.join(missing)}")
    rec.rows, rec.columns = int(ds.Rows), int(ds.Columns)
    rec.frames = _int(ds.get("NumberOfFrames")) or 1
    bits, samples = int(ds.BitsAllocated), _int(ds.get("SamplesPerPixel")) or 1
    if rec.transfer_syntax == _DEFLATED:  # a deflated stream cannot be probed: read it whole
        fp.seek(0)
        present, problem = any(t in pydicom.dcmread(fp, force=True) for t in _PIXEL_TAGS), ""
    else:
        expected = (rec.rows * rec.columns * rec.frames * samples * bits + 7) // 8
        present, problem = _probe_pixels(fp, ds, size, expected, rec.transfer_syntax in _NATIVE)
    if not present:
        return rec.fail(lacking, f"{what} has no pixel data")
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        return rec.fail(Outcome.NOT_AN_IMAGE, f"{photometric} image is not grayscale")
    if min(rec.rows, rec.columns, rec.frames, bits) < 1:
        return rec.fail(Outcome.CORRUPT, "Rows, Columns, BitsAllocated or NumberOfFrames is 0")
    codec = _codec_problem(rec.transfer_syntax)
    if codec or problem:
        return rec.fail(Outcome.UNSUPPORTED_CODEC if codec else Outcome.CORRUPT, codec or problem)
    if not (rec.study_uid and rec.series_uid):
        return rec.fail(Outcome.CORRUPT, "Study/SeriesInstanceUID missing: cannot be grouped")
    problem = _geometry(rec, ds)
    return rec.fail(Outcome.AMBIGUOUS_GEOMETRY, problem) if problem else rec


def decode(record: FileRecord) -> np.ndarray:
    """Pixel data as (frames, rows, cols) float32 with the modality LUT applied.

    MONOCHROME1 is inverted over the stored value range (``LUT(lo) + LUT(hi) - value``) so
    that bright always means high signal. Raises CodecError / CorruptError.
    """
    codec = _codec_problem(record.transfer_syntax) if record.transfer_syntax else ""
    if codec:
        raise CodecError(codec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(record.path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta.TransferSyntaxUID = UID(_transfer_syntax(ds))
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - readers and decoders fail in many ways
            raise CorruptError(f"pixel data cannot be decoded ({_safe(exc)})") from None
    arr, shape = arr[None] if arr.ndim == 2 else arr, (record.frames, record.rows, record.columns)
    if arr.shape != shape:
        raise CorruptError(f"decoded shape {arr.shape} does not match the header {shape}")
    if "ModalityLUTSequence" in ds:  # a lookup table instead of slope/intercept (rare in MR)
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    # Modality LUT per frame: per-frame functional groups, else shared, else top level.
    frames = list(ds.get("PerFrameFunctionalGroupsSequence") or []) or [None] * len(arr)
    shared, seq = _item(ds, "SharedFunctionalGroupsSequence"), "PixelValueTransformationSequence"
    keys = ("RescaleSlope", "RescaleIntercept")
    lut = [[_float(_lookup(f, shared, ds, seq, k)) for k in keys] for f in frames]
    slope = np.array([1.0 if v is None else v for v, _ in lut], np.float32)[:, None, None]
    intercept = np.array([v or 0.0 for _, v in lut], np.float32)[:, None, None]
    out = arr.astype(np.float32) * slope + intercept
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
        signed = bool(ds.get("PixelRepresentation"))
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        out = (lo + hi) * slope + 2 * intercept - out  # LUT(lo) + LUT(hi) - value
    if not np.all(np.isfinite(out)):
        raise CorruptError("pixel data contains non-finite values")
    return out


def _read_chunk(paths: list[Path]) -> list[FileRecord]:
    return [read_header(p) for p in paths]


def index_folder(
    root: Path, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> list[FileRecord]:
    """Header pass over every file below ``root`` (sorted); ``workers`` processes for big trees."""
    if not (root := Path(root)).is_dir():
        raise DataError(f"{root} is not a folder; pass the folder that holds the DICOM files")
    paths = [Path(d) / f for d, _, files in sorted(os.walk(root)) for f in sorted(files)]
    chunks = [paths[i : i + 128] for i in range(0, len(paths), 128)]
    if workers > 1 and len(paths) >= PARALLEL_MIN_FILES:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_read_chunk)(chunk) for chunk in chunks
        )
    else:
        results = map(_read_chunk, chunks)
    records: list[FileRecord] = []
    for chunk in results:
        records.extend(chunk)
        if progress:
            progress(len(records), len(paths))
    return records
