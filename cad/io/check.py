"""``cad data check``: every entry below a folder gets exactly one final outcome.

A header pass (one parse per file), then each study through the study reader, which
decodes every usable file once (pixels are dropped) and assembles it (duplicates,
sorting, geometry, DCE phases). The report holds keyed pseudonyms, never paths.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cad.errors import DataError
from cad.io.files import walk
from cad.io.index import PARALLEL_MIN_FILES, StudyTask, index_paths
from cad.io.outcome import Outcome
from cad.io.pool import WorkerPool
from cad.io.reader import Decode, read_records
from cad.phi import Pseudonymizer

REPORT_COLUMNS = ("file_key", "outcome", "reason")


@dataclass(frozen=True)
class FileOutcome:
    """The final outcome of one input entry."""

    path: Path
    outcome: Outcome
    reason: str = ""


@dataclass
class CheckResult:
    root: Path
    records: list[FileOutcome]  # walk order

    def summary(self) -> dict[Outcome, int]:
        """Count of files per outcome, every outcome listed (zeros included)."""
        counts = Counter(r.outcome for r in self.records)
        return {outcome: counts.get(outcome, 0) for outcome in Outcome}

    @property
    def all_ok(self) -> bool:
        """No file failed (side files cad wrote itself are skipped, not failures)."""
        return not self.problems

    @property
    def problems(self) -> list[FileOutcome]:
        return [r for r in self.records if r.outcome.failed]

    def write_report(
        self, path: str | Path, pseudonymizer: Pseudonymizer, only_problems: bool = False
    ) -> Path:
        """CSV ``file_key,outcome,reason`` (one row per file), written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.problems if only_problems else self.records
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(REPORT_COLUMNS)
                for rec in rows:
                    writer.writerow([pseudonymizer.file(rec.path), rec.outcome.value, rec.reason])
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def check_study(task: StudyTask) -> list[tuple[str, str]]:
    """(outcome, reason) of each file of one study, decoded and assembled."""
    read = read_records(task.read(), Decode.CHECK)
    return [(r.outcome.value, r.reason) for r in read.records]


def _study_crash(task: StudyTask) -> list[tuple[str, str]]:
    reason = "the worker process died on this study (decoder crash or out of memory)"
    return [(Outcome.PROCESSING_ERROR.value, reason)] * len(task.paths)


def check_folder(
    root: Path, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> CheckResult:
    """Header pass, decode pass and study assembly over every entry below ``root``.

    ``progress(done, total)`` counts steps: each file once in the header pass and once
    in the study pass (``total`` = 2 x files).
    """
    root = Path(root)
    paths = walk(root)
    if not paths:
        raise DataError("no files below the folder; pass the folder that holds the DICOM files")
    total, done = 2 * len(paths), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    outcomes: list[tuple[str, str]] = [("", "")] * len(paths)
    parallel = workers if workers > 1 and len(paths) >= PARALLEL_MIN_FILES else 0
    with WorkerPool(parallel) as pool:
        index = index_paths(paths, pool, progress=advance)
        for row in index.rows:
            outcomes[row.position] = (row.outcome.value, row.reason)
        advance(len(index.rows))
        results = pool.imap(check_study, ((t,) for t in index.studies), on_crash=_study_crash)
        for task, found in zip(index.studies, results, strict=True):
            for position, outcome in zip(task.positions, found, strict=True):
                outcomes[position] = outcome
            advance(len(task.paths))
    records = [
        FileOutcome(Path(p), Outcome(o), r) for p, (o, r) in zip(paths, outcomes, strict=True)
    ]
    return CheckResult(root, records)
