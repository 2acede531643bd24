"""The user-level cache of pretrained weights, keyed by content.

An entry is ``<root>/<backbone>-<key>/`` with the files of
:mod:`cad.artifacts.pretrained`; the key hashes everything that decides the weights (the
source's version, backbone, input channels, image side, the result fields of the
``pretrain`` config, the precision actually used, torch's version), so any workdir or
pipeline asking for the same weights reuses them. ``root`` is ``$CAD_CACHE/pretrained``,
else ``pretrained/`` in a ``cad`` folder next to torch's hub cache
(``~/.cache/torch/cad/pretrained`` by default). Entries are published atomically under a
lock; a killed pretraining resumes from the entry's ``.partial`` checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from cad.artifacts.checksums import sha256_file
from cad.artifacts.pretrained import WEIGHTS, PretrainRecord, read_record, write_record
from cad.config import PretrainConfig
from cad.device import resolved_precision
from cad.locks import exclusive
from cad.log import progress
from cad.pretrain.shapes import VERSION
from cad.pretrain.train import effective_size, pretrain

log = logging.getLogger("cad")


def cache_root() -> Path:
    if os.environ.get("CAD_CACHE"):
        return Path(os.environ["CAD_CACHE"]).expanduser() / "pretrained"
    return Path(torch.hub.get_dir()).parent / "cad" / "pretrained"


def weights_key(name: str, in_chans: int, cfg: PretrainConfig) -> str:
    identity = {
        "method": VERSION,
        "backbone": name,
        "in_chans": in_chans,
        "size": effective_size(name, cfg),
        "config": cfg.result_dict(),
        "precision": resolved_precision(cfg.precision),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CachedWeights:
    directory: Path  # the cache entry
    record: PretrainRecord
    reused: bool

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS


def _intact(entry: Path) -> PretrainRecord | None:
    """The entry's record when its weights match their checksum, else None."""
    try:
        record = read_record(entry)
    except (OSError, ValueError):
        return None
    weights = entry / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != record.sha256:
        log.warning("pretrained weights cache entry %s is damaged; computing it again", entry.name)
        return None
    return record


def ensure_pretrained(name: str, in_chans: int, cfg: PretrainConfig) -> CachedWeights:
    """The cache entry for these weights: reused when present and intact, else pretrained
    now (resuming a killed attempt) and published."""
    root, key = cache_root(), weights_key(name, in_chans, cfg)
    entry = root / f"{name}-{key}"
    with exclusive(root / f".{name}-{key}.lock", f"pretrained weights {entry.name}"):
        record = _intact(entry) if entry.exists() else None
        if record is not None:
            return CachedWeights(entry, record, True)
        partial = root / f".{name}-{key}.partial"
        start = time.perf_counter()
        with progress(f"pretrain {name}", cfg.steps, "steps") as advance:
            result = pretrain(name, in_chans, cfg, partial / "checkpoints", advance)
        tmp = root / f".{name}-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(result.state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        record = PretrainRecord(
            backbone=name,
            in_chans=in_chans,
            method=VERSION,
            key=key,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            size=result.size,
            classes=result.classes,
            source_accuracy=round(result.accuracy, 4),
            loss=result.loss,
            precision=resolved_precision(cfg.precision),
            seed=cfg.seed,
            wall_s=round(time.perf_counter() - start, 1),
            sha256=sha256_file(tmp / WEIGHTS),
        )
        write_record(tmp, record)
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
        shutil.rmtree(partial, ignore_errors=True)
        log.info(
            "pretrain %s: %d steps in %.0f s, source accuracy %.2f (chance %.3f); cached in %s",
            name, cfg.steps, record.wall_s, record.source_accuracy, 1 / record.classes, entry,
        )  # fmt: skip
        if not record.learned:
            from cad.log import warn_once

            warn_once(
                f"pretrain {name}: the source task was not learned (accuracy "
                f"{record.source_accuracy:.3f}, chance {1 / record.classes:.3f}): these weights "
                "are close to random. Raise pretrain.steps or lower pretrain.lr."
            )
        return CachedWeights(entry, record, False)


def link_into(cached: CachedWeights, out: Path) -> None:
    """Put the entry's files into ``out`` (hard links when on one filesystem, else copies)."""
    for source in cached.directory.iterdir():
        target = out / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
