"""Series assembly: frames of one DICOM series sorted along the slice normal into volumes
(several when temporal positions split one series), refusing ambiguous geometry.

Slices are ordered along the normal of ImageOrientationPatient by ImagePositionPatient,
never by file name or InstanceNumber. Problems become per-file outcomes, never raises.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad.errors import DataError
from cad.io.header import FileRecord
from cad.io.outcome import DecodeError, Outcome
from cad.io.pixels import decode

POSITION_TOL_MM = 0.1  # positions closer than this are "the same place"
TIMING = (  # (FileRecord attribute, DICOM name), in order of precedence
    ("temporal_ids", "TemporalPositionIdentifier"),
    ("trigger_times", "TriggerTime"),
    ("acquisition_times", "AcquisitionTime"),
)


@dataclass(frozen=True)
class Frame:
    """One 2D slice: frame ``index`` of ``record`` at ``position`` (mm)."""

    record: FileRecord
    index: int
    position: tuple[float, float, float]


@dataclass
class Series:
    """One volume: a DICOM series, or one temporal position of a multi-phase series."""

    patient_id: str
    study_uid: str
    series_uid: str
    description: str
    phase: str | None = None
    frames: list[Frame] = field(default_factory=list)  # sorted along the normal
    temporal_position: float | None = None  # set when one DICOM series held several phases
    _pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    _stats: dict = field(default_factory=dict, repr=False, compare=False)  # preprocess cache

    @property
    def records(self) -> list[FileRecord]:
        return list({id(f.record): f.record for f in self.frames}.values())

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(r.path.parent) for r in self.records]))

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.frames[0].record
        return len(self.frames), first.rows, first.columns

    def volume(self) -> np.ndarray:
        """(S, H, W) float32, slice 0 lowest along the normal; decodes on first use."""
        if self._pixels is None:
            volume = np.empty(self.shape, dtype=np.float32)  # filled in place, no stack
            slots: dict[int, list[int]] = defaultdict(list)  # record -> (slot, frame)
            for slot, frame in enumerate(self.frames):
                slots[id(frame.record)] += (slot, frame.index)
            for rec in self.records:
                try:
                    frames = decode(rec)
                except DecodeError as exc:
                    rec.fail(exc.outcome, exc.reason)
                    raise DataError(f"a slice of this series cannot be decoded: {exc}") from None
                pairs = slots[id(rec)]
                for slot, index in zip(pairs[::2], pairs[1::2], strict=True):
                    volume[slot] = frames[index]
            self._pixels = volume
        return self._pixels


def fail_all(records: list[FileRecord], outcome: Outcome, reason: str) -> list:
    for rec in records:
        rec.fail(outcome, reason)
    return []


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def stacks(records: list[FileRecord]) -> list[list[FileRecord]]:
    """A (3-plane) localizer is one stack per orientation; any other series is one stack."""
    if not any("LOCALIZER" in r.image_type for r in records):
        return [records]
    planes: dict[tuple, list[FileRecord]] = defaultdict(list)
    for rec in records:
        planes[tuple(np.round(rec.orientation, 3))].append(rec)
    return list(planes.values())


def assemble(records: list[FileRecord]) -> list[Series]:
    """The volumes of one DICOM series (several when temporal positions split it).

    Duplicate instances were settled before (``cad.io.study``); every record here is used.
    """
    first = records[0]
    if any(not np.allclose(r.orientation, first.orientation, atol=1e-3) for r in records):
        return fail_all(records, Outcome.AMBIGUOUS_GEOMETRY, "series mixes slice orientations")
    if len({(r.rows, r.columns) for r in records}) > 1:
        return fail_all(records, Outcome.AMBIGUOUS_GEOMETRY, "series mixes matrix sizes")
    normal = _normal(first.orientation)
    frames = [Frame(r, i, p) for r in records for i, p in enumerate(r.positions)]
    split = _split(frames, normal)
    if isinstance(split, str):
        return fail_all(records, Outcome.AMBIGUOUS_GEOMETRY, split)
    units = []
    for value, group in split:
        depth = np.array([np.dot(f.position, normal) for f in group])
        gaps = np.diff(depth)
        if len(gaps) > 1 and np.any(np.abs(gaps - np.median(gaps)) > 0.1 * np.median(gaps) + 0.01):
            reason = "slice spacing is irregular (a slice missing or unusable?)"
            return fail_all(records, Outcome.AMBIGUOUS_GEOMETRY, reason)
        uid, desc = first.series_uid, first.series_description
        units.append(Series(first.patient_id, first.study_uid, uid, desc, None, group, value))
    return units


def _depth_sorted(frames: list[Frame], normal: np.ndarray) -> tuple[list[Frame], np.ndarray]:
    depth = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(depth, kind="stable")
    return [frames[i] for i in order], depth[order]


def _split(frames: list[Frame], normal: np.ndarray) -> list[tuple[float | None, list]] | str:
    """Sorted frame lists, one per temporal position when positions repeat; else a reason."""
    ordered, depth = _depth_sorted(frames, normal)
    if len(depth) < 2 or np.min(np.diff(depth)) > POSITION_TOL_MM:
        return [(None, ordered)]
    for attr, _ in TIMING:
        values = [getattr(f.record, attr)[f.index] for f in frames]
        if None in values or len(set(values)) < 2:
            continue
        groups: dict[float, list[Frame]] = defaultdict(list)
        for frame, value in zip(frames, values, strict=True):
            groups[value].append(frame)
        parts = [(v, *_depth_sorted(groups[v], normal)) for v in sorted(groups)]
        ref = parts[0][2]
        if all(
            len(d) == len(ref)
            and np.allclose(d, ref, atol=POSITION_TOL_MM)
            and (len(d) < 2 or np.min(np.diff(d)) > POSITION_TOL_MM)
            for _, _, d in parts
        ):
            return [(float(v), f) for v, f, _ in parts]
    return "frames share a slice position and no temporal tag separates them"
