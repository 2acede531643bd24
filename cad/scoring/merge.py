"""``cad score merge``: the files of N ``--shard K/N`` runs joined into an unsharded run's.

Every shard records, in ``<predictions>.segments.csv``, where the header part (CSV header
lines; in shard 1 also the files that belong to no study) and each patient's rows end in
each output file. An unsharded run writes the header part, then the patients in key order;
so the merge copies shard 1's header part, then every patient's byte ranges in key order,
and the result is byte-identical to the unsharded files (a test compares them).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cad.errors import CadError
from cad.io.files import refuse_symlink
from cad.scoring.summary import ScoreSummary, summary_from_counts
from cad.scoring.writers import SEGMENT_COLUMNS, segments_path, sidecar_path

FILES = SEGMENT_COLUMNS[1:]  # predictions, errors, key_map


@dataclass(frozen=True)
class Shard:
    k: int
    n: int
    paths: dict[str, Path]  # output file per kind (key_map only when it was written)
    header: dict[str, tuple[int, int]]  # byte range of the header part per file
    patients: list[tuple[str, dict[str, tuple[int, int]]]]  # (patient, ranges) in order
    counts: dict


def _read_shard(predictions: Path, errors: Path | None, key_map: Path | None) -> Shard:
    sidecar, segments = sidecar_path(predictions), segments_path(predictions)
    if not sidecar.is_file() or not segments.is_file():
        raise CadError(
            f"{predictions.name}: no progress or segments file next to it; merge the "
            "predictions files that `cad score --shard K/N` wrote"
        )
    state = json.loads(sidecar.read_text())
    shard = state.get("fingerprint", {}).get("shard")
    if not state.get("complete") or not shard:
        raise CadError(
            f"{predictions.name}: that shard has not finished (or was not a --shard run); "
            "finish it with `cad score ... --shard K/N --resume`"
        )
    k, n = (int(x) for x in shard.split("/"))
    paths = {"predictions": predictions, "errors": errors or _errors_beside(predictions)}
    if key_map is not None:
        paths["key_map"] = key_map
    with open(segments, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or rows[0]["patient"] != "":
        raise CadError(f"{segments.name} is damaged: it lacks its header row")
    starts = {name: 0 for name in FILES}
    ranges = []
    for row in rows:
        ends = {name: int(row[name]) for name in FILES}
        ranges.append((row["patient"], {f: (starts[f], ends[f]) for f in FILES}))
        starts = ends
    header = ranges[0][1]
    return Shard(k, n, paths, header, ranges[1:], state["counts"])


def _errors_beside(predictions: Path) -> Path:
    return predictions.with_name(f"{predictions.stem}.errors.csv")


def _fingerprints(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        fingerprint = dict(json.loads(sidecar_path(path).read_text())["fingerprint"])
        fingerprint.pop("shard", None)
        out.append(fingerprint)
    return out


def merge_shards(
    shards: list[Path],
    out: Path,
    errors: Path | None = None,
    key_maps: list[Path] | None = None,
    key_map: Path | None = None,
) -> ScoreSummary:
    """Join the shards' predictions (and their errors files, found next to them as
    ``<stem>.errors.csv``; key maps when ``key_maps`` lists them in the same order)."""
    if not shards:
        raise CadError("cad score merge: give the predictions files of every shard")
    for option, path in {"--out": out, "--errors": errors, "--key-map": key_map}.items():
        refuse_symlink(path, option)
    if (key_maps is None) != (key_map is None):
        raise CadError("--key-map and --shard-key-map go together (the key maps hold PHI)")
    if key_maps is not None and len(key_maps) != len(shards):
        raise CadError("--shard-key-map: give one key map per shard, in the same order")
    read = [_read_shard(p, None, key_maps[i] if key_maps else None) for i, p in enumerate(shards)]
    n = {s.n for s in read}
    ks = sorted(s.k for s in read)
    if len(n) != 1 or ks != list(range(1, n.pop() + 1)):
        raise CadError(
            f"cad score merge: shards {', '.join(f'{s.k}/{s.n}' for s in read)} are not one "
            "complete set K/N for K = 1..N; give every shard's predictions file once"
        )
    prints = _fingerprints(shards)
    if any(p != prints[0] for p in prints):
        raise CadError(
            "cad score merge: the shards were scored with different models, folders or "
            "options; score every shard with the same command line"
        )
    read.sort(key=lambda s: s.k)
    targets = {"predictions": out, "errors": errors or _errors_beside(out)}
    if key_map is not None:
        targets["key_map"] = key_map
    order = sorted((patient, s.k - 1) for s in read for patient, _ in s.patients)
    ranges = {(patient, s.k - 1): r for s in read for patient, r in s.patients}
    for name, target in targets.items():
        _join(name, target, read, order, ranges)
    counts: Counter = Counter()
    errors_by_outcome: Counter = Counter()
    for s in read:
        errors_by_outcome.update(s.counts.get("errors", {}))
        counts.update({k: v for k, v in s.counts.items() if k != "errors"})
    merged = {**dict(counts), "errors": dict(errors_by_outcome)}
    files = merged.get("scored_files", 0) + merged.get("skipped", 0)  # one outcome per file
    summary = summary_from_counts(merged, files + sum(errors_by_outcome.values()))
    summary.predictions, summary.errors_csv = str(out), str(targets["errors"])
    summary.key_map = str(key_map or "")
    return summary


def _join(name: str, target: Path, read: list[Shard], order, ranges) -> None:
    """Write ``target``: shard 1's header part, then each patient's bytes in key order."""
    tmp = target.with_name(f".{target.name}.merge-{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    mode = 0o600 if name == "key_map" else 0o644  # the key map holds PHI: owner only
    handles = {s.k - 1: open(s.paths[name], "rb") for s in read}  # noqa: SIM115
    try:
        with os.fdopen(os.open(tmp, flags, mode), "wb") as sink:
            first = read[0]
            _copy(handles[0], sink, *first.header[name])
            for patient, shard in order:
                _copy(handles[shard], sink, *ranges[(patient, shard)][name])
        os.replace(tmp, target)
    finally:
        for handle in handles.values():
            handle.close()
        tmp.unlink(missing_ok=True)


def _copy(source, sink, start: int, end: int) -> None:
    source.seek(start)
    remaining = end - start
    while remaining > 0:
        block = source.read(min(remaining, 1 << 20))
        if not block:
            raise CadError(f"{source.name} is shorter than its segments file records")
        sink.write(block)
        remaining -= len(block)
