"""DCE phases: name the dynamic volumes of a study "pre", "post1", "post2", ... from
TemporalPositionIdentifier, TriggerTime, AcquisitionTime or, last, the series
descriptions; when none of them orders the dynamic series the study is refused
(ambiguous-phase) rather than guessed.
"""

from __future__ import annotations

import re

import numpy as np

from cad.io.outcome import Outcome
from cad.io.series import POSITION_TOL_MM, TIMING, Series, fail_all

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
    keyed = [(name, [_timing(u, attr) for u in group]) for attr, name in TIMING]
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
        fail_all([r for g in dce for u in g for r in u.records], Outcome.AMBIGUOUS_PHASE, problem)
        return {}, problem
    ordered, problem = _order(dce[0])
    if ordered is not None:
        problem = _gap(ordered)
        ordered = None if problem else ordered
    if ordered is None:
        fail_all([r for u in dce[0] for r in u.records], Outcome.AMBIGUOUS_PHASE, problem)
        return {}, problem
    for i, unit in enumerate(ordered):
        unit.phase = "pre" if i == 0 else f"post{i}"
    return {u.phase: u for u in ordered}, ""  # type: ignore[misc]
