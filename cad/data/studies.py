"""Group header records into studies and series, sort slices, identify DCE phases.

Slices are ordered along the normal of ImageOrientationPatient by ImagePositionPatient,
never by file name or InstanceNumber. Phases are named "pre", "post1", "post2", ... from
TemporalPositionIdentifier, TriggerTime, AcquisitionTime or, last, the series
descriptions; when none of them orders the dynamic series the study is refused
(ambiguous-phase) rather than guessed. Problems become per-file outcomes, never raises.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad.data.dicom import DecodeError, FileRecord, Outcome, decode
from cad.errors import DataError

POSITION_TOL_MM = 0.1  # positions closer than this are "the same place"
_TIMING = (  # (FileRecord attribute, DICOM name), in order of precedence
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
            decoded = {}
            for rec in self.records:
                try:
                    decoded[id(rec)] = decode(rec)
                except DecodeError as exc:
                    rec.fail(exc.outcome, exc.reason)
                    raise DataError(f"a slice of this series cannot be decoded: {exc}") from None
            self._pixels = np.stack([decoded[id(f.record)][f.index] for f in self.frames])
        return self._pixels


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

    Decode failures, geometry and phase problems update the records' outcomes in place.
    ``decode_pixels=False`` assembles from headers only (manifest building);
    ``keep_pixels=False`` validates by decoding but keeps no pixels (``cad data check``).
    """
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
    stacks = [stack for recs in by_series.values() for stack in _stacks(recs)]
    units = [unit for stack in stacks for unit in _assemble(stack)]
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


def _fail(records: list[FileRecord], outcome: Outcome, reason: str) -> list:
    for rec in records:
        rec.fail(outcome, reason)
    return []


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def _stacks(records: list[FileRecord]) -> list[list[FileRecord]]:
    """A (3-plane) localizer is one stack per orientation; any other series is one stack."""
    if not any("LOCALIZER" in r.image_type for r in records):
        return [records]
    planes: dict[tuple, list[FileRecord]] = defaultdict(list)
    for rec in records:
        planes[tuple(np.round(rec.orientation, 3))].append(rec)
    return list(planes.values())


def _assemble(records: list[FileRecord]) -> list[Series]:
    """The volumes of one DICOM series (several when temporal positions split it)."""
    kept: dict[str, FileRecord] = {}
    for rec in records:
        if rec.sop_uid and rec.sop_uid in kept:
            rec.fail(Outcome.AMBIGUOUS_GEOMETRY, "duplicate copy of another file (same instance)")
        else:
            kept[rec.sop_uid or str(id(rec))] = rec
    records = list(kept.values())
    first = records[0]
    if any(not np.allclose(r.orientation, first.orientation, atol=1e-3) for r in records):
        return _fail(records, Outcome.AMBIGUOUS_GEOMETRY, "series mixes slice orientations")
    if len({(r.rows, r.columns) for r in records}) > 1:
        return _fail(records, Outcome.AMBIGUOUS_GEOMETRY, "series mixes matrix sizes")
    normal = _normal(first.orientation)
    frames = [Frame(r, i, p) for r in records for i, p in enumerate(r.positions)]
    split = _split(frames, normal)
    if isinstance(split, str):
        return _fail(records, Outcome.AMBIGUOUS_GEOMETRY, split)
    units = []
    for value, group in split:
        depth = np.array([np.dot(f.position, normal) for f in group])
        gaps = np.diff(depth)
        if len(gaps) > 1 and np.any(np.abs(gaps - np.median(gaps)) > 0.1 * np.median(gaps) + 0.01):
            reason = "slice spacing is irregular (a slice missing or unusable?)"
            return _fail(records, Outcome.AMBIGUOUS_GEOMETRY, reason)
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
    for attr, _ in _TIMING:
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


# ----------------------------------------------------------------------------- phases

_LOCALIZER = re.compile(r"(?<![a-z])(loc|localizer|localiser|scout|survey|tri ?pilot)")
_NOT_DCE = re.compile(r"(?<![a-z])(t2|stir|dwi|diff\w*|adc|trace|sub|subtraction|mip)(?![a-z])")
_DYNAMIC = re.compile(r"dyn|dce|vibrant|twist|tricks|disco|contrast|gad|\+ ?c(?![a-z])")
_PRE = re.compile(r"(?<![a-z])(pre|precontrast|baseline)(?![a-z])")
_ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}


def _words(description: str) -> str:
    return re.sub(r"[^a-z0-9+]+", " ", description.lower()).strip()


def description_rank(description: str) -> int | None:
    """Temporal rank a description states: pre -> 0, '2nd pass' / 'post2' / 'ph2' -> 2."""
    text = _words(description)
    pre = _PRE.search(text)
    post = re.search(r"(?<![a-z])(post|postcontrast)(?![a-z])", text)
    if pre and not post:
        return 0
    for pattern in (
        r"(?<![0-9])(\d+) ?(?:st|nd|rd|th)(?![a-z])",
        r"(?<![a-z])(?:post|ph|phase|pass) ?(\d+)",
    ):
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
    for word, rank in _ORDINAL_WORDS.items():
        if re.search(rf"(?<![a-z]){word}(?![a-z])", text):
            return rank
    return 1 if post and not pre else None


def _is_dynamic(unit: Series) -> bool:
    recs = unit.records
    text = _words(unit.description)
    if any(r.modality != "MR" for r in recs) or _LOCALIZER.search(text) or _NOT_DCE.search(text):
        return False
    if any("LOCALIZER" in r.image_type or "SUBTRACTION" in r.image_type for r in recs):
        return False
    timed = any(t is not None for r in recs for t in r.temporal_ids) or any(
        t for r in recs for t in r.trigger_times
    )
    return (
        unit.temporal_position is not None
        or timed
        or bool(_DYNAMIC.search(text))
        or (description_rank(unit.description) is not None)
    )


def _same_geometry(a: Series, b: Series) -> bool:
    if a.shape != b.shape:
        return False
    orient_a, orient_b = a.frames[0].record.orientation, b.frames[0].record.orientation
    pa = np.array([f.position for f in a.frames])
    pb = np.array([f.position for f in b.frames])
    return np.allclose(orient_a, orient_b, atol=1e-3) and np.allclose(pa, pb, atol=POSITION_TOL_MM)


def _timing(unit: Series, attr: str) -> float | None:
    """One timing value per volume (the earliest acquisition time; else it must be unique)."""
    values = {getattr(f.record, attr)[f.index] for f in unit.frames}
    if None in values:
        return None
    if attr == "acquisition_times":
        return min(values)
    return values.pop() if len(values) == 1 else None


def _order(group: list[Series]) -> tuple[list[Series] | None, str]:
    notes = []
    keyed = [(name, [_timing(u, attr) for u in group]) for attr, name in _TIMING]
    keyed.append(("description", [description_rank(u.description) for u in group]))
    for name, values in keyed:
        if None in values:
            notes.append(f"{name} missing")
        elif len(set(values)) < len(values):
            notes.append(f"{name} not distinct")
        else:
            ordered = [u for _, u in sorted(zip(values, group, strict=True), key=lambda p: p[0])]
            return _contradiction(ordered, name)
    return None, f"{len(group)} dynamic series cannot be ordered: {', '.join(notes)}"


def _contradiction(ordered: list[Series], key: str) -> tuple[list[Series] | None, str]:
    """Refuse an order that the series descriptions contradict (a safety net, not a key)."""
    ranks = [r for r in map(description_rank, (u.description for u in ordered)) if r is not None]
    if ranks != sorted(ranks):
        return None, f"the {key} order contradicts the series descriptions"
    first = _words(ordered[0].description)
    if re.search(r"(?<![a-z])(post|pass)(?![a-z])", first) and not _PRE.search(first):
        return None, "no pre-contrast series: the earliest dynamic series is described as post"
    return ordered, ""


def _gap(ordered: list[Series]) -> str:
    """A dynamic series missing from the middle would shift every later phase name (the 2nd
    pass would be called post1): refuse when TemporalPositionIdentifiers or the series
    descriptions skip a number."""
    tpis = [_timing(u, "temporal_ids") for u in ordered]
    if None not in tpis and [t - tpis[0] for t in tpis] != list(range(len(tpis))):
        return f"dynamic series missing: TemporalPositionIdentifiers {sorted(map(int, tpis))}"
    ranks = [description_rank(u.description) for u in ordered]
    if None not in ranks and ranks[0] == 0 and ranks != list(range(len(ranks))):
        return f"dynamic series missing: descriptions number the phases {ranks}"
    return ""


def identify_phases(units: list[Series]) -> tuple[dict[str, Series], str]:
    """Name the DCE volumes "pre", "post1", ...; mark ambiguous-phase records on refusal."""
    groups: list[list[Series]] = []
    for unit in filter(_is_dynamic, units):
        match = next((g for g in groups if _same_geometry(g[0], unit)), None)
        if match is None:
            groups.append([unit])
        else:
            match.append(unit)
    dce = [g for g in groups if len(g) >= 2]
    if not dce:
        return {}, ""
    if len(dce) > 1:
        problem = f"{len(dce)} groups of dynamic series with different geometry"
        _fail([r for g in dce for u in g for r in u.records], Outcome.AMBIGUOUS_PHASE, problem)
        return {}, problem
    ordered, problem = _order(dce[0])
    if ordered is not None:
        problem = _gap(ordered)
        ordered = None if problem else ordered
    if ordered is None:
        _fail([r for u in dce[0] for r in u.records], Outcome.AMBIGUOUS_PHASE, problem)
        return {}, problem
    for i, unit in enumerate(ordered):
        unit.phase = "pre" if i == 0 else f"post{i}"
    return {u.phase: u for u in ordered}, ""  # type: ignore[misc]
