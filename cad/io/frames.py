"""Per-frame header values: orientation, positions, timing and the modality LUT, looked up
in the per-frame functional groups, else the shared ones, else the top level."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from cad.io.header import FileRecord

_RESCALE = "PixelValueTransformationSequence"
_MISSING = object()
_NOTHING: dict[str, Any] = {}  # an absent item (a new Dataset per frame costs more)


class Values:
    """A data set's top-level values by keyword, each looked up and converted once.

    Hand-written because every ``Dataset.get`` walks pydicom's attribute machinery again
    (keyword -> tag -> element -> value): a header's checks ask for the same few dozen
    elements ~50 times, and that lookup was a third of the header pass.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self._seen: dict[str, Any] = {}

    def get(self, keyword: str, default: Any = None) -> Any:
        value = self._seen.get(keyword, _MISSING)
        if value is _MISSING:
            value = self._seen[keyword] = self.ds.get(keyword, _MISSING)
        return default if value is _MISSING else value

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.ds  # presence only: no value is converted


def as_float(value: Any) -> float | None:
    """A finite float, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def as_int(value: Any) -> int | None:
    return None if (number := as_float(value)) is None else int(number)


def seconds(date: Any, time: Any) -> float | None:
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


def item(ds: Dataset | Values | None, keyword: str) -> Dataset | None:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def lookup(frame: Dataset | None, shared: Dataset | None, ds: Values, seq: str, kw: str):
    """An attribute from the per-frame group, else the shared group, else the top level."""
    for group in (item(frame, seq), item(shared, seq)):
        if group is not None and kw in group:
            return group.get(kw)
    return ds.get(kw)


def _numbers(value: Any, n: int, name: str) -> tuple[float, ...] | str:
    """``n`` finite numbers, or a PHI-free problem description."""
    if value is None:
        return f"{name} missing"
    out = [] if isinstance(value, str | bytes) else [as_float(v) for v in value]
    return tuple(out) if len(out) == n and None not in out else f"{name} is not {n} numbers"


def per_frame(ds: Values, frames: int) -> list[Dataset | None]:
    """The per-frame functional group items (``None`` per frame for classic images)."""
    return list(ds.get("PerFrameFunctionalGroupsSequence") or []) or [None] * frames


def rescale(rec: FileRecord, ds: Values, groups: list[Dataset | None]) -> str:
    """Fill RescaleSlope/Intercept per frame (absent: 1 and 0); a problem or ''.

    A value that is present but not a finite number makes the file corrupt: read as 1/0
    it would silently give wrong intensities.
    """
    shared = item(ds, "SharedFunctionalGroupsSequence")
    for frame in groups:
        pair = []
        for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
            value = lookup(frame, shared, ds, _RESCALE, keyword)
            if value is None or value == "":
                pair.append(default)
                continue
            number = as_float(value)
            if number is None:
                return f"{keyword} is not a finite number"
            pair.append(number)
        rec.slopes.append(pair[0])
        rec.intercepts.append(pair[1])
    return ""


def geometry(rec: FileRecord, ds: Values, groups: list[Dataset | None]) -> str:
    """Fill orientation, positions and timing per frame; return a problem or ''."""
    shared = item(ds, "SharedFunctionalGroupsSequence")
    if len(groups) != rec.frames:
        return "per-frame functional groups do not match NumberOfFrames"
    orients, problems = set(), []
    for frame in groups:
        iop = lookup(frame, shared, ds, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = lookup(frame, shared, ds, "PlanePositionSequence", "ImagePositionPatient")
        iop = _numbers(iop, 6, "ImageOrientationPatient")
        ipp = _numbers(ipp, 3, "ImagePositionPatient")
        problems += [v for v in (iop, ipp) if isinstance(v, str)]
        if not isinstance(iop, str):
            orients.add(tuple(round(v, 4) for v in iop))
        if not isinstance(ipp, str):
            rec.positions.append(ipp)  # type: ignore[arg-type]
        content = item(frame, "FrameContentSequence") or _NOTHING
        rec.temporal_ids.append(
            as_int(content.get("TemporalPositionIndex", ds.get("TemporalPositionIdentifier")))
        )
        kw = "TemporalPositionTimeOffset"
        offset = lookup(frame, shared, ds, "TemporalPositionSequence", kw)
        rec.trigger_times.append(as_float(offset if offset is not None else ds.get("TriggerTime")))
        stamp = str(content.get("FrameAcquisitionDateTime") or ds.get("AcquisitionDateTime") or "")
        day, time = (stamp[:8], stamp[8:]) if stamp else (ds.get("AcquisitionDate"), None)
        rec.acquisition_times.append(seconds(day, time or ds.get("AcquisitionTime")))
    if problems or len(orients) != 1:
        return problems[0] if problems else "frames of one file have different orientations"
    row, col = np.array(orients.pop()).reshape(2, 3)
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1)) > 1e-2:
        return "ImageOrientationPatient cosines are not unit vectors"
    if abs(float(row @ col)) > 1e-2:
        return "ImageOrientationPatient row and column are not orthogonal"
    rec.orientation = tuple(float(v) for v in (*row, *col))
    return ""
