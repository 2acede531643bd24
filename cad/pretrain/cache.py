"""The user-level cache of pretrained weights, keyed by content.

An entry is ``<root>/<backbone>-<key>/`` with the files of
:mod:`cad.artifacts.pretrained`; the key hashes everything that decides the weights (the
source's version, backbone, input channels, image side, the result fields of the
``pretrain`` config, the precision actually used, torch's version; for contrastive
pretraining also the SHA-256 of the training slices' pixels and the key of the weights it
starts from), so any workdir or pipeline asking for the same weights reuses them. With
``shapes+contrastive`` the shapes phase is an entry of its own, shared with ``shapes``.
``root`` is ``$CAD_CACHE/pretrained``, else ``pretrained/`` in a ``cad`` folder next to
torch's hub cache (``~/.cache/torch/cad/pretrained`` by default). Entries are published
atomically under a lock; a killed pretraining resumes from the entry's ``.partial``
checkpoints.
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
from safetensors.torch import load_file, save_file

from cad.artifacts.checksums import sha256_file
from cad.artifacts.pretrained import WEIGHTS, PretrainRecord, read_record, write_record
from cad.config import PretrainConfig
from cad.device import resolved_precision
from cad.errors import ConfigError
from cad.locks import exclusive
from cad.log import progress
from cad.pretrain import contrastive, shapes
from cad.pretrain.train import PretrainResult, effective_size, pretrain

log = logging.getLogger("cad")


def cache_root() -> Path:
    if os.environ.get("CAD_CACHE"):
        return Path(os.environ["CAD_CACHE"]).expanduser() / "pretrained"
    return Path(torch.hub.get_dir()).parent / "cad" / "pretrained"


def _shapes_config(cfg: PretrainConfig) -> PretrainConfig:
    """The config of the shapes phase alone (its key is the same under every method)."""
    return cfg.model_copy(update={"method": "shapes", "contrastive": type(cfg.contrastive)()})


def weights_key(name: str, in_chans: int, cfg: PretrainConfig, slices_sha256: str = "") -> str:
    """The cache key of ``cfg``'s weights; ``slices_sha256`` names the training slices of a
    contrastive method (:func:`slices_digest`)."""
    if not cfg.uses_slices:
        config = cfg.result_dict()
        del config["contrastive"]
        identity = {
            "method": shapes.VERSION,
            "backbone": name,
            "in_chans": in_chans,
            "size": effective_size(name, cfg),
            "config": config,
            "precision": resolved_precision(cfg.precision),
            "torch": torch.__version__.split("+")[0],
        }
    else:
        start = weights_key(name, in_chans, _shapes_config(cfg)) if cfg.uses_shapes else "random"
        shared = ("unnormalized_lr_scale", "weight_decay", "warmup")
        identity = {
            "method": contrastive.VERSION,
            "backbone": name,
            "in_chans": in_chans,
            "size": effective_size(name, cfg, contrastive=True),
            "config": {**cfg.contrastive.result_dict(), **{k: getattr(cfg, k) for k in shared}},
            "start": start,
            "slices": slices_sha256,
            "precision": resolved_precision(cfg.precision),
            "torch": torch.__version__.split("+")[0],
        }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def slices_digest(slices: torch.Tensor) -> str:
    """SHA-256 of the slices' shape and float32 pixels: what contrastive weights learn from."""
    digest = hashlib.sha256(str(tuple(slices.shape)).encode())
    digest.update(slices.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def ensure_pretrained(
    name: str, in_chans: int, cfg: PretrainConfig, slices: torch.Tensor | None = None
) -> CachedWeights:
    """The cache entry for these weights: reused when present and intact, else pretrained
    now (resuming a killed attempt) and published. A contrastive method needs ``slices``,
    the training patients' pixels (N x C x H x W); ``shapes+contrastive`` first ensures the
    shapes entry it starts from."""
    if cfg.uses_slices and slices is None:
        raise ConfigError(
            f"pretrain.method {cfg.method} learns from the training patients' slices: run it "
            "inside a pipeline (`cad run`, or `cad pretrain --pipeline P --workdir W`), or "
            "set pretrain.method=shapes"
        )
    start = None
    if cfg.uses_slices and cfg.uses_shapes:
        start = ensure_pretrained(name, in_chans, _shapes_config(cfg))
    digest = slices_digest(slices) if slices is not None and cfg.uses_slices else ""
    root, key = cache_root(), weights_key(name, in_chans, cfg, digest)
    entry = root / f"{name}-{key}"
    with exclusive(root / f".{name}-{key}.lock", f"pretrained weights {entry.name}"):
        record = _intact(entry) if entry.exists() else None
        if record is not None:
            return CachedWeights(entry, record, True)
        partial = root / f".{name}-{key}.partial"
        started = time.perf_counter()
        steps = cfg.contrastive.steps if cfg.uses_slices else cfg.steps
        with progress(f"pretrain {name} ({cfg.method})", steps, "steps") as advance:
            if cfg.uses_slices:
                state = None if start is None else load_file(str(start.weights))
                result = pretrain(
                    name, in_chans, cfg, partial / "checkpoints", advance, slices, state
                )
            else:
                result = pretrain(name, in_chans, cfg, partial / "checkpoints", advance)
        tmp = root / f".{name}-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(result.state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        record = _record(name, in_chans, cfg, key, result, start, time.perf_counter() - started)
        record = record.model_copy(update={"sha256": sha256_file(tmp / WEIGHTS)})
        write_record(tmp, record)
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
        shutil.rmtree(partial, ignore_errors=True)
        log.info(
            "pretrain %s: %d steps (%s) in %.0f s, accuracy %.2f (chance %.3f); cached in %s",
            name, steps, cfg.method, record.wall_s, record.source_accuracy, 1 / record.classes,
            entry,
        )  # fmt: skip
        if not record.learned:
            from cad.log import warn_once

            warn_once(
                f"pretrain {name}: the {cfg.method} task was not learned (accuracy "
                f"{record.source_accuracy:.3f}, chance {1 / record.classes:.3f}): these weights "
                "are close to random. Raise the pretrain steps or lower the pretrain lr."
            )
        return CachedWeights(entry, record, False)


def _record(
    name: str,
    in_chans: int,
    cfg: PretrainConfig,
    key: str,
    result: PretrainResult,
    start: CachedWeights | None,
    wall_s: float,
) -> PretrainRecord:
    budget = cfg.contrastive if cfg.uses_slices else cfg
    method = contrastive.VERSION if cfg.uses_slices else shapes.VERSION
    return PretrainRecord(
        backbone=name,
        in_chans=in_chans,
        method=method if start is None else f"{start.record.method}+{method}",
        key=key,
        steps=budget.steps,
        batch_size=budget.batch_size,
        size=result.size,
        classes=result.classes,
        source_accuracy=round(result.accuracy, 4),
        loss=result.loss,
        precision=resolved_precision(cfg.precision),
        seed=budget.seed,
        wall_s=round(wall_s, 1),
        sha256="",
        start=None if start is None else start.record,
    )


def link_into(cached: CachedWeights, out: Path) -> None:
    """Put the entry's files into ``out`` (hard links when on one filesystem, else copies)."""
    for source in cached.directory.iterdir():
        target = out / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
