"""Study assembly: usable records grouped by (patient, study), duplicate instances
settled, then sorted series and DCE phases; every problem becomes a per-file outcome."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad.io.header import FileRecord
from cad.io.outcome import DecodeError, Outcome
from cad.io.phases import identify_phases
from cad.io.pixels import decode, pixel_bytes
from cad.io.series import Series, assemble, stacks

DUPLICATE_COPY = "duplicate copy of another file (same instance)"
CONFLICT = "another file has the same SOPInstanceUID but different content; neither is used"


@dataclass
class StudyGroup:
    """The header records of one (patient, study), before decoding."""

    patient_id: str
    study_uid: str
    records: list[FileRecord]


@dataclass
class Study:
    patient_id: str
    study_uid: str
    series: list[Series]
    phases: dict[str, Series]  # "pre", "post1", ... (empty when not a usable DCE study)
    folder: Path  # common parent of the study's files
    phase_problem: str = ""  # why no phases were assigned, PHI-free
    _stats: dict = field(default_factory=dict, repr=False, compare=False)  # preprocess cache

    def describe_phases(self) -> str:
        found = ", ".join(self.phases) or "none"
        return found + (f" ({self.phase_problem})" if self.phase_problem else "")


def group_studies(records: list[FileRecord]) -> list[StudyGroup]:
    """Usable records grouped by (patient, study), in first-seen order. Header info only."""
    groups: dict[tuple[str, str], StudyGroup] = {}
    for rec in records:
        if rec.outcome == Outcome.OK:
            key = (rec.patient_id, rec.study_uid)
            groups.setdefault(key, StudyGroup(*key, [])).records.append(rec)
    return list(groups.values())


def load_study(group: StudyGroup, decode_pixels: bool = True, keep_pixels: bool = True) -> Study:
    """Decode (optionally), assemble sorted series and identify DCE phases.

    Duplicate instances, decode failures, geometry and phase problems update the records'
    outcomes in place.
    ``decode_pixels=False`` assembles from headers only (manifest building);
    ``keep_pixels=False`` validates by decoding but keeps no pixels (``cad data check``).
    """
    settle_duplicates(group.records)
    pixels: dict[int, np.ndarray] = {}
    for rec in group.records:
        if decode_pixels and rec.outcome == Outcome.OK:
            try:
                arr = decode(rec)
            except DecodeError as exc:
                rec.fail(exc.outcome, exc.reason)
                continue
            if keep_pixels:
                pixels[id(rec)] = arr
    by_series: dict[str, list[FileRecord]] = defaultdict(list)
    for rec in group.records:
        if rec.outcome == Outcome.OK:
            by_series[rec.series_uid].append(rec)
    parts = [stack for recs in by_series.values() for stack in stacks(recs)]
    units = [unit for stack in parts for unit in assemble(stack)]
    phases, problem = identify_phases(units)
    usable = [u for u in units if all(r.outcome == Outcome.OK for r in u.records)]
    if keep_pixels and decode_pixels:  # move frames into volumes, freeing files as they empty
        uses = Counter(id(f.record) for unit in usable for f in unit.frames)
        for unit in usable:
            unit._pixels = np.empty(unit.shape, dtype=np.float32)
            for k, frame in enumerate(unit.frames):
                unit._pixels[k] = pixels[id(frame.record)][frame.index]
                uses[id(frame.record)] -= 1
                if not uses[id(frame.record)]:
                    del pixels[id(frame.record)]
    folder = os.path.commonpath([str(r.path.parent) for r in group.records])
    return Study(group.patient_id, group.study_uid, usable, phases, Path(folder), problem)


def settle_duplicates(records: list[FileRecord]) -> None:
    """Files of one study sharing a SOPInstanceUID: identical copies (same series, geometry
    and pixels) keep the first and mark the others ``ambiguous-geometry``; copies that
    differ in any of these are all ``conflicting-duplicate`` (which one is right is unknown)."""
    copies: dict[str, list[FileRecord]] = defaultdict(list)
    for rec in records:
        if rec.outcome == Outcome.OK and rec.sop_uid:
            copies[rec.sop_uid].append(rec)
    for same in copies.values():
        if len(same) < 2:
            continue
        if all(_same_content(same[0], other) for other in same[1:]):
            for other in same[1:]:
                other.fail(Outcome.AMBIGUOUS_GEOMETRY, DUPLICATE_COPY)
        else:
            for rec in same:
                rec.fail(Outcome.CONFLICTING_DUPLICATE, CONFLICT)


def _same_content(a: FileRecord, b: FileRecord) -> bool:
    keys = ("series_uid", "rows", "columns", "frames", "orientation", "positions")
    if any(getattr(a, k) != getattr(b, k) for k in keys + ("slopes", "intercepts")):
        return False
    try:
        raw_a, raw_b = pixel_bytes(a), pixel_bytes(b)
        if raw_a is not None and raw_a == raw_b:
            return True
        return bool(np.array_equal(decode(a), decode(b)))  # e.g. one copy re-encoded
    except DecodeError:
        return False
