"""Streaming input: folder walk, grouping pass and per-study decoding in worker processes.

The grouping pass reads two tags per file (PatientID, StudyInstanceUID) and the parent
keeps only each file's path under its pseudonymous (patient, study) key: ~200 bytes per
file instead of a full header record. A worker then reads the full headers of one study
(``read_header``), assembles it with the training code (``group_studies`` /
``load_study`` / ``study_slices``) and sends back its preprocessed slices; a study's
pixels exist only while it is in flight.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from cad.config import InputConfig
from cad.data.dicom import Outcome, read_header
from cad.data.preprocess import parse_phase, study_slices
from cad.data.studies import Study, group_studies, load_study
from cad.errors import CadError, DataError
from cad.phi import Pseudonymizer

# Outcomes that scoring adds to the per-file outcomes of ingest (cad.data.dicom.Outcome).
MISSING_PHASE = "missing-phase"  # the study lacks (or could not order) a phase the model needs
STUDY_UNUSABLE = "study-unusable"  # a needed series could not be decoded or preprocessed
PROCESSING_ERROR = "processing-error"  # unexpected failure (a bug or a crashed decoder)

HEADER_CHUNK = 256
_GROUP_TAGS = ["PatientID", "StudyInstanceUID"]
ErrorRow = tuple[str, str, str]  # (file key, outcome, reason)
KeyRow = tuple[str, str, str]  # (pseudonym, identifier kind, identifier): key map only


@dataclass(frozen=True)
class StudyTask:
    """One study to decode: pseudonymous keys and the paths of its usable files."""

    patient: str
    study: str
    paths: tuple[str, ...]
    last_of_patient: bool = False


@dataclass
class FolderIndex:
    """What the header pass found below the input folder."""

    files: int
    studies: list[StudyTask]  # sorted by (patient key, study key)
    errors: list[ErrorRow]  # files unusable from their header alone, in walk order
    error_paths: list[str]  # their paths (only kept for the key map)
    digest: str  # hash of every file key: tells a resumed run whether the folder changed


@dataclass
class StudyResult:
    """One decoded study: slices and keys, or the reason it could not be scored."""

    patient: str
    study: str
    series: str = ""  # key of the reference (pre-contrast) series
    images: np.ndarray | None = None  # (S, C, H, W) float32
    instances: list[str] = field(default_factory=list)  # instance key per slice
    samples: list[str] = field(default_factory=list)  # slice key per slice
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


def walk(root: Path) -> list[str]:
    """Every file below ``root``, in the same sorted order as ``index_folder``."""
    return [os.path.join(d, f) for d, _, files in sorted(os.walk(root)) for f in sorted(files)]


# ----------------------------------------------------------------------------- workers


def _init_worker() -> None:
    """Decode workers run single-threaded: parallelism comes from the processes. Study
    volumes are allocated and freed once per study: keep them in the heap too."""
    import torch

    from cad.heap import reuse_freed_memory

    torch.set_num_threads(1)
    reuse_freed_memory()


def _ping() -> bool:
    return True


def _quick_group(path: str) -> tuple[str, str] | None:
    """(PatientID, StudyInstanceUID) from a partial parse, or None when that is not enough
    (no preamble, unreadable, no StudyInstanceUID): then ``read_header`` decides."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_GROUP_TAGS)
        study_uid = str(ds.get("StudyInstanceUID") or "")
        return (str(ds.get("PatientID") or ""), study_uid) if study_uid else None
    except Exception:  # noqa: BLE001 - anything odd gets the full header read
        return None


def group_headers(paths: list[str], secret: bytes) -> list[tuple[str, str, str, str]]:
    """Per file: (file key, outcome, reason, "patient-key study-key" or "" if unusable).

    Files that name their study are grouped from two tags only (about 2.5x cheaper than a
    full header read); the study's worker reads their full headers. The others get their
    typed outcome from ``read_header`` here.
    """
    pseudo = Pseudonymizer(secret)
    out = []
    for path in paths:
        ids = _quick_group(path)
        if ids is None:
            rec = read_header(Path(path))
            if rec.outcome == Outcome.OK:
                ids = (rec.patient_id, rec.study_uid)
            else:
                out.append((pseudo.file(path), rec.outcome.value, rec.reason, ""))
                continue
        group = f"{pseudo.patient(ids[0])} {pseudo.study(ids[1])}"
        out.append((pseudo.file(path), Outcome.OK.value, "", group))
    return out


def _header_crash(paths: list[str], secret: bytes) -> list[tuple[str, str, str, str]]:
    pseudo = Pseudonymizer(secret)
    reason = "the header reader crashed on a file of this batch"
    return [(pseudo.file(p), PROCESSING_ERROR, reason, "") for p in paths]


def process_study(task: StudyTask, spec: InputConfig, secret: bytes, key_map: bool) -> StudyResult:
    """Decode and preprocess one study exactly as training ingest does; never raises."""
    pseudo = Pseudonymizer(secret)
    result = StudyResult(
        task.patient, task.study, files=len(task.paths), last_of_patient=task.last_of_patient
    )
    records = [read_header(Path(p)) for p in task.paths]
    broken = [rec for rec in records if rec.outcome != Outcome.OK]  # unusable on their own
    try:
        groups = group_studies(records)
        result.readable = bool(groups)
        if len(groups) != 1:
            reason = "files changed while scoring: the study's headers no longer agree"
            return _unusable(result, records, pseudo, STUDY_UNUSABLE, reason, key_map)
        # Header-only assembly; study_slices then decodes just the series it needs.
        study = load_study(groups[0], decode_pixels=False)
        needed = needed_phases(spec)
        if needed - set(study.phases):
            reason = (
                f"the model needs phases {', '.join(sorted(needed))}; "
                f"this study has {study.describe_phases()}"
            )
            return _unusable(result, records, pseudo, MISSING_PHASE, reason, key_map)
        try:
            images = study_slices(study, spec)
        except DataError as exc:
            return _unusable(result, records, pseudo, STUDY_UNUSABLE, str(exc), key_map)
        reference = study.phases.get("pre") or next(iter(study.phases.values()))
        if len(images) != len(reference.frames):
            reason = "the needed phases have different numbers of slices"
            return _unusable(result, records, pseudo, STUDY_UNUSABLE, reason, key_map)
    except Exception as exc:  # noqa: BLE001 - one study must never abort the batch
        reason = f"unexpected {type(exc).__name__} while reading this study"
        return _unusable(result, records, pseudo, PROCESSING_ERROR, reason, key_map)
    _fill(result, study, reference, images, needed, pseudo, key_map)
    for rec in broken:
        result.errors.append((pseudo.file(rec.path), rec.outcome.value, rec.reason))
        if key_map:
            result.key_rows.append((pseudo.file(rec.path), "path", str(rec.path)))
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
    if key_map:
        rows = [
            (result.patient, "PatientID", study.patient_id),
            (result.study, "StudyInstanceUID", study.study_uid),
            (result.series, "SeriesInstanceUID", reference.series_uid),
        ]
        for key, frame in zip(result.instances, reference.frames, strict=True):
            rows += [
                (key, "SOPInstanceUID", frame.record.sop_uid),
                (key, "path", str(frame.record.path)),
            ]
        result.key_rows = list(dict.fromkeys(rows))  # multi-frame files repeat instances


def _unusable(
    result: StudyResult,
    records: list,
    pseudo: Pseudonymizer,
    outcome: str,
    reason: str,
    key_map: bool,
) -> StudyResult:
    """Every file of the study becomes an error row; files that failed on their own
    (corrupt, ambiguous geometry or phase, ...) keep their own outcome and reason."""
    for rec in records:
        own = rec.outcome != Outcome.OK
        key = pseudo.file(rec.path)
        result.errors.append(
            (key, rec.outcome.value if own else outcome, rec.reason if own else reason)
        )
        if key_map:
            result.key_rows.append((key, "path", str(rec.path)))
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
        result.errors.append((pseudo.file(path), PROCESSING_ERROR, reason))
        if key_map:
            result.key_rows.append((pseudo.file(path), "path", path))
    return result


# ----------------------------------------------------------------------------- pool


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where available, else spawn; never plain fork.

    The parent runs torch threads, which forked children would inherit in a broken state.
    The fork server is a fresh process that imports this module (torch, pydicom) once;
    workers fork from it, so they start in milliseconds and share those pages.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class WorkerPool:
    """Worker processes with a bounded number of tasks in flight.

    ``workers=0`` runs everything in this process. When a worker dies (a decoder crash, the
    OOM killer), the pool is restarted, the task being awaited is retried alone to find
    the culprit, and only the culprit is given up (``on_crash``).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._ping: Future | None = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(wait=exc_type is None)

    def start(self) -> None:
        """Start booting the workers now; they get ready while the caller does other work."""
        if self.workers > 0 and self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=_context(), initializer=_init_worker
            )
            self._ping = self._pool.submit(_ping)

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        self.start()
        return self._pool

    def _restart(self) -> None:
        """Replace a broken pool; raise CadError if workers cannot even start."""
        try:
            started = self._ping is not None and self._ping.result()
        except BrokenProcessPool:
            started = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        if not started:
            raise CadError(
                "decoding worker processes could not start. From a Python script, call "
                "score_folder under `if __name__ == '__main__':` (workers are spawned and "
                "import the main module), or pass workers=0"
            )

    def imap(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple],
        inflight: int,
        on_crash: Callable[..., Any],
    ) -> Iterator[Any]:
        """``fn(*task)`` for each task, results in task order, at most ``inflight`` pending."""
        if self.workers <= 0:
            for task in tasks:
                yield fn(*task)
            return
        pending: deque[tuple[tuple, Future]] = deque()
        source = iter(tasks)

        def refill() -> None:
            while len(pending) < max(inflight, 1):
                task = next(source, None)
                if task is None:
                    return
                pending.append((task, self._executor().submit(fn, *task)))

        refill()
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                others = [t for t, _ in pending]
                pending.clear()
                self._restart()
                result = self._alone(fn, task, on_crash)
                for other in others:
                    pending.append((other, self._executor().submit(fn, *other)))
            yield result
            refill()

    def _alone(self, fn: Callable[..., Any], task: tuple, on_crash: Callable[..., Any]) -> Any:
        try:
            return self._executor().submit(fn, *task).result()
        except BrokenProcessPool:
            self._restart()
            return on_crash(*task)


def index_folder_stream(
    paths: list[str],
    secret: bytes,
    pool: WorkerPool,
    key_map: bool,
    progress: Callable[[int], None] | None = None,
) -> FolderIndex:
    """Header pass over ``paths`` (from ``walk``): header failures and sorted study tasks."""
    chunks = [paths[i : i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)]
    groups: dict[str, list[str]] = {}
    errors: list[ErrorRow] = []
    error_paths: list[str] = []
    digest = hashlib.sha256()
    tasks = ((chunk, secret) for chunk in chunks)
    results = pool.imap(group_headers, tasks, 2 * max(pool.workers, 1), _header_crash)
    for chunk, rows in zip(chunks, results, strict=True):
        for path, (file_key, outcome, reason, group) in zip(chunk, rows, strict=True):
            digest.update(file_key.encode())
            if group:
                groups.setdefault(group, []).append(path)
            else:
                errors.append((file_key, outcome, reason))
                if key_map:
                    error_paths.append(path)
        if progress:
            progress(len(chunk))
    studies = []
    ordered = sorted(groups)
    for i, group in enumerate(ordered):
        patient, study = group.split(" ")
        last = i + 1 == len(ordered) or ordered[i + 1].split(" ")[0] != patient
        studies.append(StudyTask(patient, study, tuple(groups.pop(group)), last))
    return FolderIndex(len(paths), studies, errors, error_paths, digest.hexdigest())


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
