"""Scoring's study worker: one study's header records -> its preprocessed slices, or the
typed reason it cannot be scored, with PHI-free error rows.

The header pass (``cad.io.index``) parses every file once and files its record under the
study; a worker assembles the study from those records with the study reader (no file
is parsed again), and ``study_slices`` decodes only the phases the model needs, each
file's pixel data read once. A study's pixels exist only while it is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cad.config import InputConfig
from cad.data.preprocess import parse_phase, study_slices
from cad.errors import DataError
from cad.io.index import StudyTask
from cad.io.outcome import Outcome
from cad.io.pool import WorkerPool
from cad.io.reader import read_records
from cad.io.study import Study
from cad.phi import Pseudonymizer

ErrorRow = tuple[str, str, str]  # (file key, outcome, reason)
KeyRow = tuple[str, str, str]  # (pseudonym, identifier kind, identifier): key map only
PRELOAD = ("cad.scoring.stream",)  # imported once by the fork server (torch, pydicom)


@dataclass
class StudyResult:
    """One decoded study: slices and keys, or the reason it could not be scored."""

    patient: str
    study: str
    series: str = ""  # key of the reference (pre-contrast) series
    images: np.ndarray | None = None  # (S, C, H, W) float32
    instances: list[str] = field(default_factory=list)  # instance key per slice
    samples: list[str] = field(default_factory=list)  # slice key per slice
    frames: list[int] = field(default_factory=list)  # frame index in its file, per slice
    errors: list[ErrorRow] = field(default_factory=list)
    files: int = 0
    scored_files: int = 0
    skipped: int = 0
    key_rows: list[KeyRow] = field(default_factory=list)
    last_of_patient: bool = False
    readable: bool = False  # at least one file has a usable header: it counts as a study

    @property
    def slices(self) -> int:
        return 0 if self.images is None else len(self.images)


def needed_phases(spec: InputConfig) -> set[str]:
    """The DCE phases ``study_slices`` reads for ``spec`` (mirrors its own check)."""
    expressions = [parse_phase(e) for e in spec.phases]
    if spec.channels == "dce":
        return {name for terms in expressions for name, _ in terms} | {"pre"}
    return {name for name, _ in expressions[0]}


def init_worker() -> None:
    """Decode workers run single-threaded: parallelism comes from the processes. Study
    volumes are allocated and freed once per study: keep them in the heap too."""
    import torch

    from cad.heap import reuse_freed_memory

    torch.set_num_threads(1)
    reuse_freed_memory()


def printable(path: str) -> str:
    """A path for the key map: undecodable bytes of a file name shown as escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def process_study(task: StudyTask, spec: InputConfig, secret: bytes, key_map: bool) -> StudyResult:
    """Decode and preprocess one study exactly as training ingest does; never raises."""
    pseudo = Pseudonymizer(secret)
    result = StudyResult(
        task.patient, task.study, files=len(task.paths), last_of_patient=task.last_of_patient
    )
    records = task.read()
    own = {id(rec) for rec in records if rec.outcome != Outcome.OK}  # unusable on their own
    try:
        result.readable = len(own) < len(records)
        # Header-only assembly; study_slices then decodes just the series it needs.
        read = read_records(records)
        if len(read.studies) != 1:
            reason = "the study's files do not form one usable study"
            return _unusable(result, records, pseudo, Outcome.STUDY_UNUSABLE, reason, key_map)
        study = read.studies[0]
        needed = needed_phases(spec)
        if needed - set(study.phases):
            reason = (
                f"the model needs phases {', '.join(sorted(needed))}; "
                f"this study has {study.describe_phases()}"
            )
            return _unusable(result, records, pseudo, Outcome.MISSING_PHASE, reason, key_map)
        try:
            images = study_slices(study, spec)
        except DataError as exc:
            return _unusable(result, records, pseudo, Outcome.STUDY_UNUSABLE, str(exc), key_map)
        reference = study.phases.get("pre") or next(iter(study.phases.values()))
        if len(images) != len(reference.frames):
            reason = "the needed phases have different numbers of slices"
            return _unusable(result, records, pseudo, Outcome.STUDY_UNUSABLE, reason, key_map)
    except Exception as exc:  # noqa: BLE001 - one study must never abort the batch
        reason = f"unexpected {type(exc).__name__} while reading this study"
        return _unusable(result, records, pseudo, Outcome.PROCESSING_ERROR, reason, key_map)
    _fill(result, study, reference, images, needed, pseudo, key_map)
    # Errors of a scored study: files unusable on their own, and conflicting duplicates
    # wherever they are (which copy is right is unknown); other files are only skipped.
    conflict = Outcome.CONFLICTING_DUPLICATE
    broken = [rec for rec in records if id(rec) in own or rec.outcome == conflict]
    for rec in broken:
        result.errors.append((pseudo.file(rec.path), rec.outcome.value, rec.reason))
        if key_map:
            result.key_rows.append((pseudo.file(rec.path), "path", printable(str(rec.path))))
    result.skipped -= len(broken)
    return result


def _fill(
    result: StudyResult,
    study: Study,
    reference: Any,
    images: np.ndarray,
    needed: set[str],
    pseudo: Pseudonymizer,
    key_map: bool,
) -> None:
    used = {id(f.record) for name in needed for f in study.phases[name].frames}
    result.scored_files = len(used)
    # Readable files of a scored study outside the needed volumes (localizer, T1, later
    # phases, duplicates) are skipped, not errors.
    result.skipped = result.files - result.scored_files
    result.images = np.ascontiguousarray(images, dtype=np.float32)
    result.series = pseudo.series(reference.series_uid)
    for i, frame in enumerate(reference.frames):
        result.instances.append(pseudo.instance(frame.record.sop_uid))
        result.samples.append(pseudo.slice(study.study_uid, i))
        result.frames.append(frame.index)
    if key_map:
        rows = [
            (result.patient, "PatientID", study.patient_id),
            (result.study, "StudyInstanceUID", study.study_uid),
            (result.series, "SeriesInstanceUID", reference.series_uid),
        ]
        for key, frame in zip(result.instances, reference.frames, strict=True):
            rows += [
                (key, "SOPInstanceUID", frame.record.sop_uid),
                (key, "path", printable(str(frame.record.path))),
            ]
        result.key_rows = list(dict.fromkeys(rows))  # multi-frame files repeat instances


def _unusable(
    result: StudyResult,
    records: list,
    pseudo: Pseudonymizer,
    outcome: Outcome,
    reason: str,
    key_map: bool,
) -> StudyResult:
    """Every file of the study becomes an error row; files that failed on their own
    (corrupt, ambiguous geometry or phase, ...) keep their own outcome and reason."""
    for rec in records:
        own = rec.outcome != Outcome.OK
        key = pseudo.file(rec.path)
        result.errors.append(
            (key, rec.outcome.value if own else outcome.value, rec.reason if own else reason)
        )
        if key_map:
            result.key_rows.append((key, "path", printable(str(rec.path))))
    if key_map and records and records[0].patient_id:
        result.key_rows[:0] = [
            (result.patient, "PatientID", records[0].patient_id),
            (result.study, "StudyInstanceUID", records[0].study_uid),
        ]
    return result


def _study_crash(task: StudyTask, spec: InputConfig, secret: bytes, key_map: bool) -> StudyResult:
    pseudo = Pseudonymizer(secret)
    result = StudyResult(
        task.patient,
        task.study,
        files=len(task.paths),
        last_of_patient=task.last_of_patient,
        readable=True,
    )
    reason = "the worker process died on this study (decoder crash or out of memory)"
    for path in task.paths:
        result.errors.append((pseudo.file(path), Outcome.PROCESSING_ERROR.value, reason))
        if key_map:
            result.key_rows.append((pseudo.file(path), "path", printable(path)))
    return result


def iter_studies(
    tasks: Iterable[StudyTask],
    spec: InputConfig,
    secret: bytes,
    pool: WorkerPool,
    key_map: bool,
    inflight: int,
) -> Iterator[StudyResult]:
    """Decoded studies in task order, at most ``inflight`` of them decoding or waiting."""
    args = ((task, spec, secret, key_map) for task in tasks)
    yield from pool.imap(process_study, args, inflight, _study_crash)
