"""``cad data check``: every file below a folder gets exactly one final outcome.

Two passes: headers (``index_folder``), then every usable file is decoded once and the
studies are assembled from headers (sorting, geometry, DCE phases). The report holds
keyed pseudonyms of the files, never their paths.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cad.data import dicom
from cad.data.dicom import DecodeError, FileRecord, Outcome, decode, index_folder
from cad.data.studies import group_studies, load_study
from cad.errors import DataError
from cad.phi import Pseudonymizer

REPORT_COLUMNS = ("file_key", "outcome", "reason")


@dataclass
class CheckResult:
    root: Path
    records: list[FileRecord]

    def summary(self) -> dict[Outcome, int]:
        """Count of files per outcome, every outcome listed (zeros included)."""
        counts = Counter(r.outcome for r in self.records)
        return {outcome: counts.get(outcome, 0) for outcome in Outcome}

    @property
    def all_ok(self) -> bool:
        return all(r.outcome == Outcome.OK for r in self.records)

    @property
    def problems(self) -> list[FileRecord]:
        return [r for r in self.records if r.outcome != Outcome.OK]

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


def _decode_chunk(records: list[FileRecord]) -> list[tuple[Outcome, str]]:
    """Decode each file once (pixels are dropped); the outcome it earns."""
    out = []
    for rec in records:
        try:
            decode(rec)
            out.append((Outcome.OK, ""))
        except DecodeError as exc:
            out.append((exc.outcome, exc.reason))
    return out


def check_folder(
    root: Path, workers: int = 1, progress: Callable[[int, int], None] | None = None
) -> CheckResult:
    """Header pass, decode pass and study assembly over every file below ``root``.

    ``progress(done, total)`` counts steps: each file once in the header pass and once
    in the decode pass (``total`` = 2 x files).
    """
    root = Path(root)
    header_progress = (lambda done, total: progress(done, 2 * total)) if progress else None
    records = index_folder(root, workers=workers, progress=header_progress)
    if not records:
        raise DataError(f"no files below {root}; pass the folder that holds the DICOM files")
    total, usable = 2 * len(records), [r for r in records if r.outcome == Outcome.OK]
    done = total - len(usable)
    if progress:
        progress(done, total)
    chunks = [usable[i : i + 64] for i in range(0, len(usable), 64)]
    if workers > 1 and len(usable) >= dicom.PARALLEL_MIN_FILES:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_decode_chunk)(chunk) for chunk in chunks
        )
    else:
        results = map(_decode_chunk, chunks)
    for chunk, outcomes in zip(chunks, results, strict=True):
        for rec, (outcome, reason) in zip(chunk, outcomes, strict=True):
            if outcome != Outcome.OK:
                rec.fail(outcome, reason)
        done += len(chunk)
        if progress:
            progress(done, total)
    for group in group_studies(records):  # geometry and phases, from headers only
        load_study(group, decode_pixels=False)
    return CheckResult(root, records)
