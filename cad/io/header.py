"""Header reading: one parse per file gives its typed outcome and a ``FileRecord`` with
everything grouping, assembly and pixel decoding need (no pixel data is read).

It tells special, unreadable, side and non-DICOM files, non-images, unsupported codecs,
truncated or implausible pixel data, non-finite rescale values and geometry-less files
from usable images. Reasons are PHI-free: no path, name, ID, date or UID.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import as_pixel_options

from cad.io import frames as fr
from cad.io import pixels as px
from cad.io.files import Unusable, open_regular, side_file
from cad.io.outcome import Outcome, safe_reason

logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # failures become outcomes instead


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
    slopes: list[float] = field(default_factory=list)  # modality LUT per frame
    intercepts: list[float] = field(default_factory=list)
    size: int = 0  # file size and mtime at header time: decoding refuses a changed file
    mtime_ns: int = 0
    pixel_offset: int = 0  # where the pixel value starts in the file
    pixel_length: int = 0
    pixel_options: dict[str, Any] = field(default_factory=dict)  # pydicom decoder options
    direct: bool = False  # pixels decodable from (offset, length) without a header parse

    def fail(self, outcome: Outcome, reason: str) -> FileRecord:
        self.outcome, self.reason = outcome, reason
        return self


_TUPLES = {"image_type", "orientation"}


def record_bytes(rec: FileRecord) -> bytes:
    """A compact JSON form of ``rec`` without its path (header-pass results are kept as
    these until a study's worker needs them: no pickle, a fraction of the objects' size)."""
    values = {f.name: getattr(rec, f.name) for f in fields(rec) if f.name != "path"}
    return json.dumps(values, separators=(",", ":")).encode()


def record_from_bytes(path: str | Path, data: bytes) -> FileRecord:
    values = json.loads(data)
    for name in _TUPLES:
        if values[name] is not None:
            values[name] = tuple(values[name])
    values["positions"] = [tuple(p) for p in values["positions"]]
    values["outcome"] = Outcome(values["outcome"])
    return FileRecord(path=Path(path), **values)


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
_TEXT = {"patient_id": "PatientID", "study_uid": "StudyInstanceUID", "modality": "Modality"}
_TEXT |= {"series_uid": "SeriesInstanceUID", "sop_uid": "SOPInstanceUID"}
_TEXT |= {"series_description": "SeriesDescription"}
_IMAGE_ELEMENTS = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
# The top-level elements this module, ``frames`` and pydicom's ``as_pixel_options`` read:
# the header parse keeps only these (pydicom seeks over the other values instead of
# reading and storing them). A test compares records against a parse that keeps all.
HEADER_KEYWORDS = (
    *_TEXT.values(),
    *_IMAGE_ELEMENTS,
    *("SOPClassUID", "SeriesNumber", "InstanceNumber", "ImageType", "NumberOfFrames"),
    *("SamplesPerPixel", "PlanarConfiguration", "BitsStored", "PixelRepresentation"),
    *("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "ModalityLUTSequence"),
    *("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"),
    *("ImageOrientationPatient", "ImagePositionPatient", "RescaleSlope", "RescaleIntercept"),
    *("TemporalPositionIdentifier", "TriggerTime", "AcquisitionDateTime"),
    *("AcquisitionDate", "AcquisitionTime"),
)
HEADER_TAGS: list[int] | None = [tag_for_keyword(k) for k in HEADER_KEYWORDS]  # type: ignore[misc]


def read_header(path: str | Path) -> FileRecord:
    """Classify one file from its header (no pixel decode) and record what grouping needs."""
    rec = FileRecord(path=Path(path))
    validation = config.settings.reading_validation_mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every odd value; outcomes say it
        # ... so it need not check every value against its VR either (a warning at most;
        # the checks here decide): 15% of a header's parse time.
        config.settings.reading_validation_mode = config.IGNORE
        try:
            fd = open_regular(rec.path)
        except Unusable as exc:
            return rec.fail(exc.outcome, exc.reason)
        try:
            with os.fdopen(fd, "rb") as fp:
                st = os.fstat(fp.fileno())
                rec.size, rec.mtime_ns = st.st_size, st.st_mtime_ns
                return _read(rec, fp, st.st_size)
        except OSError as exc:
            return rec.fail(Outcome.UNREADABLE, f"file cannot be read ({type(exc).__name__})")
        except Exception as exc:  # noqa: BLE001 - malformed values surface lazily
            return rec.fail(Outcome.CORRUPT, f"header value malformed ({safe_reason(exc)})")
        finally:
            config.settings.reading_validation_mode = validation


def _expected_bytes(ds: Dataset | fr.Values) -> int:
    """Decoded bytes the header's matrix claims, -1 without image elements."""
    if any(ds.get(k) in (None, "") for k in _IMAGE_ELEMENTS):
        return -1
    frames = fr.as_int(ds.get("NumberOfFrames")) or 1
    samples = fr.as_int(ds.get("SamplesPerPixel")) or 1
    rows, columns, bits = (int(ds.get(k)) for k in ("Rows", "Columns", "BitsAllocated"))
    return max((rows * columns * frames * samples * bits + 7) // 8, 0)


def _read(rec: FileRecord, fp: BinaryIO, size: int) -> FileRecord:
    head = fp.read(132)
    preamble = len(head) == 132 and head[128:132] == b"DICM"
    raw = len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00")  # data set, no preamble
    if not (preamble or raw):
        if reason := side_file(rec.path, head):
            return rec.fail(Outcome.SIDE_FILE, reason)
        return rec.fail(Outcome.NOT_DICOM, "empty file" if not head else "no DICOM preamble")
    deflated = preamble and px.meta_end(fp)[0] == px.DEFLATED
    fp.seek(0)
    try:
        if deflated:
            ds, located = px.read_deflated(fp, _expected_bytes)
        else:
            ds = pydicom.dcmread(
                fp, stop_before_pixels=True, force=not preamble, specific_tags=HEADER_TAGS
            )
            located = None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a finding
        if isinstance(exc, InvalidDicomError) or not preamble:
            return rec.fail(Outcome.NOT_DICOM, "no DICOM preamble and not parseable")
        return rec.fail(Outcome.CORRUPT, f"header cannot be parsed ({type(exc).__name__})")
    values = fr.Values(ds)
    if not preamble and "SOPClassUID" not in values and "Rows" not in values:
        return rec.fail(Outcome.NOT_DICOM, "no DICOM preamble and not a DICOM data set")
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop = str(values.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    for attr, keyword in _TEXT.items():
        setattr(rec, attr, str(values.get(keyword) or ""))
    rec.series_number = fr.as_int(values.get("SeriesNumber"))
    rec.instance_number = fr.as_int(values.get("InstanceNumber"))
    rec.image_type = tuple(str(v).upper() for v in (values.get("ImageType") or ()))
    rec.transfer_syntax = px.transfer_syntax(ds)
    what = px.uid_name(sop, "SOP class")
    # An image SOP class without image elements / pixel data is broken, anything else is
    # simply not an image.
    lacking = Outcome.CORRUPT if "Image Storage" in what else Outcome.NOT_AN_IMAGE
    for prefix, kind in _NON_IMAGE.items():
        if sop.startswith(prefix):
            return rec.fail(Outcome.NOT_AN_IMAGE, f"{what}: a {kind}, not an image")
    missing = [k for k in _IMAGE_ELEMENTS if values.get(k) in (None, "")]
    if missing:
        return rec.fail(lacking, f"{what} lacks image elements {', '.join(missing)}")
    rec.rows, rec.columns = int(values.get("Rows")), int(values.get("Columns"))
    rec.frames = fr.as_int(values.get("NumberOfFrames")) or 1
    bits, samples = int(values.get("BitsAllocated")), fr.as_int(values.get("SamplesPerPixel")) or 1
    if located is None:
        native = rec.transfer_syntax in px.NATIVE
        located = px.locate(fp, ds, size, _expected_bytes(values), native)
    if not located.present:
        return rec.fail(lacking, f"{what} has no pixel data")
    photometric = str(values.get("PhotometricInterpretation")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        return rec.fail(Outcome.NOT_AN_IMAGE, f"{photometric} image is not grayscale")
    if min(rec.rows, rec.columns, rec.frames, bits) < 1:
        return rec.fail(Outcome.CORRUPT, "Rows, Columns, BitsAllocated or NumberOfFrames is 0")
    codec = px.codec_problem(rec.transfer_syntax)
    if codec or located.problem:
        problem = codec or located.problem
        return rec.fail(Outcome.UNSUPPORTED_CODEC if codec else Outcome.CORRUPT, problem)
    if rec.rows * rec.columns * rec.frames > px.MAX_PIXELS:
        return rec.fail(Outcome.CORRUPT, f"matrix implausibly large: more than {px.MAX_PIXELS} px")
    if not (rec.study_uid and rec.series_uid):
        return rec.fail(Outcome.CORRUPT, "Study/SeriesInstanceUID missing: cannot be grouped")
    _pixel_layout(rec, values, located, deflated)
    groups = fr.per_frame(values, rec.frames)
    problem = fr.geometry(rec, values, groups)
    if problem:
        return rec.fail(Outcome.AMBIGUOUS_GEOMETRY, problem)
    problem = fr.rescale(rec, values, groups)
    return rec.fail(Outcome.CORRUPT, problem) if problem else rec


def _pixel_layout(rec: FileRecord, values: fr.Values, located: px.Located, deflated: bool) -> None:
    """What decoding needs: the decoder options and, when possible, where the bytes are."""
    ds = values.ds
    options = {
        k: v if v is None or isinstance(v, str) else int(v)
        for k, v in as_pixel_options(ds).items()
        if k != "extended_offsets"
    }
    rec.pixel_options = {**options, "pixel_keyword": located.keyword}
    rec.pixel_offset, rec.pixel_length = located.offset, located.length
    _, little = ds.original_encoding
    rec.direct = bool(
        little
        and not deflated
        and located.keyword == "PixelData"
        and "ExtendedOffsetTable" not in values
        and "ModalityLUTSequence" not in values
    )
