"""Ingest: manifest rows -> decoded, preprocessed slices cached once as ``images.npy``.

Each study folder is read by the study reader (``cad.io.reader``) in a worker process of
the shared pool (decode is CPU-bound), every file gets one typed outcome, and a study that
cannot be used is reported and skipped, never fatal. Only keyed pseudonyms leave this
module.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cad.config import InputConfig
from cad.data.manifest import ManifestRow
from cad.data.preprocess import series_slices, study_slices
from cad.data.samples import Sample, write_samples
from cad.errors import DataError
from cad.io.files import walk
from cad.io.outcome import Outcome
from cad.io.pool import WorkerPool
from cad.io.reader import Decode, read_folder
from cad.phi import Pseudonymizer

log = logging.getLogger("cad.data")
_PRELOAD = ("cad.data.ingest",)  # what ingest workers import once, in the fork server


@dataclass
class FolderResult:
    """What one manifest folder produced: slices, their samples, and per-file outcomes."""

    images: np.ndarray | None = None
    samples: list[Sample] = field(default_factory=list)
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # file key, outcome, reason
    error: str = ""


def ingest_folder(
    folder: Path, rows: list[ManifestRow], spec: InputConfig, secret: bytes
) -> FolderResult:
    """Decode one study (or series) folder and cut out the slices its manifest rows name."""
    pseudo = Pseudonymizer(secret)
    result = FolderResult()
    read = read_folder(folder, Decode.EAGER)
    records, studies = read.records, read.studies
    result.outcomes = [(pseudo.file(r.path), str(r.outcome), r.reason) for r in records]
    kind = rows[0].series
    usable = [s for s in studies if (s.phases if kind == "dce" else s.series)]
    if not usable:
        reasons = sorted({r.reason for r in records if r.outcome.failed} - {""})
        result.error = (
            "no usable "
            + ("DCE study" if kind == "dce" else "series")
            + (f" ({'; '.join(reasons[:3])})" if reasons else "")
        )
        return result
    if len(usable) > 1:
        result.error = f"{len(usable)} studies in one manifest folder; give each its own row path"
        return result
    study = usable[0]
    wanted = sorted({r.slice_index for r in rows if r.slice_index is not None})
    all_slices = any(r.slice_index is None for r in rows)
    try:
        if kind == "dce":
            reference = study.phases.get("pre") or next(iter(study.phases.values()))
            images = study_slices(study, spec, None if all_slices else wanted)
        else:
            reference = study.series[0]
            images = series_slices(reference, spec, None if all_slices else wanted)
    except DataError as exc:
        result.error = str(exc)
        return result
    n_slices = len(reference.frames)
    indices = list(range(n_slices)) if all_slices else wanted
    bad = [i for i in indices if not 0 <= i < n_slices]
    if bad:
        result.error = f"slice index {bad[0]} outside the volume of {n_slices} slices"
        return result
    label_of = {r.slice_index: r.label for r in rows}
    patient = pseudo.patient(rows[0].patient_id)
    study_key = pseudo.study(study.study_uid)
    series_key = pseudo.series(reference.series_uid)
    for i in indices:
        label = label_of.get(i, label_of.get(None))
        result.samples.append(
            Sample(pseudo.slice(study.study_uid, i), patient, study_key, series_key, i, int(label))
        )
    result.images = np.ascontiguousarray(images, dtype=np.float32)
    return result


def group_rows(rows: list[ManifestRow]) -> dict[tuple[str, str], list[ManifestRow]]:
    groups: dict[tuple[str, str], list[ManifestRow]] = defaultdict(list)
    for row in rows:
        groups[(row.path, row.series)].append(row)
    return dict(groups)


def iter_ingest(
    root: Path, rows: list[ManifestRow], spec: InputConfig, secret: bytes, workers: int
) -> Iterator[FolderResult]:
    groups = list(group_rows(rows).items())
    args = ((root / path, grouped, spec, secret) for (path, _), grouped in groups)
    with WorkerPool(workers if workers > 1 else 0, preload=_PRELOAD) as pool:
        yield from pool.imap(ingest_folder, args, on_crash=_folder_crash)


def _folder_crash(
    folder: Path, rows: list[ManifestRow], spec: InputConfig, secret: bytes
) -> FolderResult:
    """A worker died on this folder: its files are processing errors, the rest goes on."""
    pseudo = Pseudonymizer(secret)
    reason = "the worker process died on this folder (decoder crash or out of memory)"
    files = walk(folder) if folder.is_dir() else []
    outcome = Outcome.PROCESSING_ERROR.value
    return FolderResult(outcomes=[(pseudo.file(p), outcome, reason) for p in files], error=reason)


def run_ingest(
    out: Path,
    root: Path,
    rows: list[ManifestRow],
    spec: InputConfig,
    secret: bytes,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write images.npy, samples.csv and ingest_report.csv into ``out``; return counts."""
    samples: list[Sample] = []
    errors: list[str] = []
    outcome_counts: dict[str, int] = defaultdict(int)
    raw = out / "images.raw"
    with open(raw, "wb") as sink, open(out / "ingest_report.csv", "w", newline="") as report:
        writer = csv.writer(report)
        writer.writerow(["file_key", "outcome", "reason"])
        for result in iter_ingest(root, rows, spec, secret, workers):
            for row in result.outcomes:
                writer.writerow(row)
                outcome_counts[row[1]] += 1
            if result.error:
                errors.append(result.error)
            elif result.images is not None:
                sink.write(result.images.tobytes())
                samples.extend(result.samples)
            if progress:
                progress(1)
    if not samples:
        raise DataError(
            "ingest produced no usable slices; see ingest_report.csv for each file's outcome"
            + (f" (first problem: {errors[0]})" if errors else "")
        )
    shape = (len(samples), spec.in_chans, spec.size, spec.size)
    flat = np.memmap(raw, dtype=np.float32, mode="r", shape=shape)
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.float32, shape=shape)
    for start in range(0, len(samples), 512):
        images[start : start + 512] = flat[start : start + 512]
    images.flush()
    del images, flat
    raw.unlink()
    write_samples(samples, out / "samples.csv")
    for message in sorted(set(errors)):
        log.warning("skipped %d study folder(s): %s", errors.count(message), message)
    return {
        "items": len(samples),
        "studies": len(group_rows(rows)),
        "studies_skipped": len(errors),
        "outcomes": dict(outcome_counts),
        "positives": int(sum(s.label for s in samples)),
    }
