"""The header pass over many files in worker processes: each file is parsed once, and the
result is either its final outcome (unusable on its own) or a compact record filed under
its (patient, study), ready for a study's worker to assemble without re-reading it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cad.errors import DataError
from cad.io.files import walk
from cad.io.header import FileRecord, read_header, record_bytes, record_from_bytes
from cad.io.outcome import Outcome
from cad.io.pool import WorkerPool
from cad.phi import Pseudonymizer

PARALLEL_MIN_FILES = 1000  # below this, starting worker processes costs more than it saves
HEADER_CHUNK = 256
ErrorRow = tuple[str, str, str]  # (file key, outcome, reason)


@dataclass(frozen=True)
class StudyTask:
    """One study: its keys, and per file the path, walk position and header record."""

    patient: str
    study: str
    paths: tuple[str, ...]
    records: tuple[bytes, ...]  # ``record_bytes`` of each file's header
    positions: tuple[int, ...] = ()  # index of each file in the walk
    last_of_patient: bool = False

    def read(self) -> list[FileRecord]:
        """The files' header records (no file is opened)."""
        return [record_from_bytes(p, r) for p, r in zip(self.paths, self.records, strict=True)]


@dataclass(frozen=True)
class HeaderRow:
    """A file that belongs to no study: its final outcome came from its header alone."""

    position: int
    file_key: str
    outcome: Outcome
    reason: str
    path: str = ""  # only when asked for (a key map)


@dataclass
class FolderIndex:
    """What the header pass found: the studies (sorted by patient key, study key) and the
    files that belong to none (in walk order)."""

    files: int
    studies: list[StudyTask]
    rows: list[HeaderRow] = field(default_factory=list)
    digest: str = ""  # hash of every file key, size and mtime: did the folder change since?

    @property
    def errors(self) -> list[ErrorRow]:
        return [(r.file_key, r.outcome.value, r.reason) for r in self.rows if r.outcome.failed]

    @property
    def error_paths(self) -> list[str]:
        return [r.path for r in self.rows if r.outcome.failed]

    @property
    def side_files(self) -> int:
        return sum(not r.outcome.failed for r in self.rows)

    def shard(self, k: int, n: int) -> FolderIndex:
        """The K-th of N deterministic shards (1-based): the studies of the patients whose
        key hashes to it (a patient is never split), and, in shard 1 only, the files that
        belong to no study. The N shards together hold every file exactly once."""
        mine = [t for t in self.studies if shard_of(t.patient, n) == k]
        return replace(self, studies=mine, rows=self.rows if k == 1 else [])


def shard_of(patient: str, n: int) -> int:
    """Which of ``n`` shards (1-based) a patient key belongs to: stable across machines."""
    return int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big") % n + 1


def _stamp(path: str) -> str:
    """Size and modification time: a file rewritten since an interrupted run changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _header_chunk(paths: list[str], secret: bytes | None) -> list[tuple]:
    """Per file: (file key, outcome, reason, (patient key, study key) or None, record,
    stamp)."""
    pseudo = Pseudonymizer(secret) if secret is not None else None
    out = []
    for path in paths:
        rec = read_header(path)
        key = pseudo.file(path) if pseudo else ""
        stamp = _stamp(path)
        if not rec.study_uid:  # not even a study to report it with
            out.append((key, rec.outcome.value, rec.reason, None, b"", stamp))
            continue
        ids = (rec.patient_id, rec.study_uid)
        group = (pseudo.patient(ids[0]), pseudo.study(ids[1])) if pseudo else ids
        out.append((key, rec.outcome.value, rec.reason, group, record_bytes(rec), stamp))
    return out


def _header_crash(paths: list[str], secret: bytes | None) -> list[tuple]:
    pseudo = Pseudonymizer(secret) if secret is not None else None
    reason = "the header reader crashed on a file of this batch"
    return [
        (pseudo.file(p) if pseudo else "", Outcome.PROCESSING_ERROR.value, reason, None, b"", "-")
        for p in paths
    ]


def index_paths(
    paths: list[str],
    pool: WorkerPool,
    secret: bytes | None = None,
    keep_paths: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FolderIndex:
    """Header pass over ``paths`` (from ``walk``). With ``secret`` the file, patient and
    study keys are pseudonyms; without, the raw identifiers (kept in memory only)."""
    chunks = [paths[i : i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)]
    groups: dict[tuple[str, str], list[tuple[str, bytes, int]]] = {}
    rows: list[HeaderRow] = []
    digest = hashlib.sha256()
    results = pool.imap(_header_chunk, ((c, secret) for c in chunks), on_crash=_header_crash)
    position = 0
    for chunk, found in zip(chunks, results, strict=True):
        for path, (file_key, outcome, reason, group, record, stamp) in zip(
            chunk, found, strict=True
        ):
            digest.update(f"{file_key}\0{stamp}\0".encode())
            if group is not None:
                groups.setdefault(tuple(group), []).append((path, record, position))
            else:
                rows.append(
                    HeaderRow(
                        position, file_key, Outcome(outcome), reason, path if keep_paths else ""
                    )
                )
            position += 1
        if progress:
            progress(len(chunk))
    studies = []
    ordered = sorted(groups)
    for i, group in enumerate(ordered):
        last = i + 1 == len(ordered) or ordered[i + 1][0] != group[0]
        files = groups.pop(group)
        paths_, records, positions = (tuple(x) for x in zip(*files, strict=True))
        studies.append(StudyTask(*group, paths_, records, positions, last))
    return FolderIndex(len(paths), studies, rows, digest.hexdigest())


def _read_chunk(paths: list[str]) -> list[FileRecord]:
    return [read_header(p) for p in paths]


def index_folder(
    root: Path, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> list[FileRecord]:
    """Full header records of every entry below ``root`` (walk order), in ``workers``
    processes for big trees. For callers that need every record at once (manifests)."""
    if not (root := Path(root)).is_dir():
        raise DataError("the DICOM root is not a folder; pass the folder that holds the files")
    paths = walk(root)
    chunks = [paths[i : i + HEADER_CHUNK // 2] for i in range(0, len(paths), HEADER_CHUNK // 2)]
    records: list[FileRecord] = []
    parallel = workers if workers > 1 and len(paths) >= PARALLEL_MIN_FILES else 0
    with WorkerPool(parallel) as pool:
        for chunk in pool.imap(_read_chunk, ((c,) for c in chunks)):
            records.extend(chunk)
            if progress:
                progress(len(records), len(paths))
    return records
