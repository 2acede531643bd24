"""Fine-tuning loop: frozen prefix cached once, only the trainable part runs every epoch.

With offline (or no) augmentation the frozen prefix is a pure function of a fixed set of
images, so its output is computed once and each step runs suffix + head only: the same
maths as running the whole network (a test compares the losses). Online augmentation
falls back to full forwards. Early stopping on validation F1; checkpoints are atomic
safetensors files so that a killed run resumes at the last finished epoch.

Data-parallel (``world`` of N ranks under torchrun): every rank draws the same permutation
and takes its contiguous part of each global batch; DistributedDataParallel averages the
gradients of a loss scaled so that the step is the global batch's (a sum over the rank's
samples over the global batch's weight, times N). The prefix cache is computed once, each
rank its part of the images, and gathered; validation runs outside DDP (no collective per
forward), each rank on its part, and the logits are gathered with padding, so ranks holding
unequal rows never hang. Only rank 0 keeps the best state and writes checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cad.checkpoint import Checkpoint
from cad.config import AugmentConfig, FinetuneConfig
from cad.data.augment import apply, make_augment
from cad.device import Runtime, optimizer_step
from cad.distributed import SINGLE, World, state_digest
from cad.errors import CadError
from cad.finetune.model import AUX_WEIGHT, TransferModel, split_prefix
from cad.finetune.predict import predict_proba

log = logging.getLogger("cad.finetune")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_f1: float = -1.0
    val_prob: np.ndarray | None = None
    used_prefix_cache: bool = False
    ranks: int = 1
    weights_sha256: str | None = None  # data-parallel: the final state, equal on every rank


class _CachedStep(nn.Module):
    """The training forward on cached prefix outputs, as one module for DDP to wrap."""

    def __init__(self, suffix: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.suffix, self.head = suffix, head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.head(self.suffix(x))]


class _FullStep(nn.Module):
    """The full training forward (main and auxiliary logits), as one module for DDP."""

    def __init__(self, model: TransferModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_supervised(x)


def sync_batchnorm(step: nn.Module, runtime: Runtime) -> nn.Module:
    """On GPUs, ``step`` with its BatchNorm as SyncBatchNorm (statistics over the global
    batch; the new layers share the originals' parameters and buffers, so the model and
    its optimizer see every update). torch has no CPU SyncBatchNorm: on gloo each rank
    normalises its own part of the batch, and ``step`` is returned as is."""
    if runtime.device.type != "cuda":
        return step
    return nn.SyncBatchNorm.convert_sync_batchnorm(step)


def data_parallel(step: nn.Module, runtime: Runtime, find_unused: bool) -> nn.Module:
    """``step`` (with :func:`sync_batchnorm`) wrapped in DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        sync_batchnorm(step, runtime),
        device_ids=None if runtime.device.type == "cpu" else [runtime.device],
        # the full forward may leave some trainable layer unused (an aux branch)
        find_unused_parameters=find_unused,
    )


@torch.inference_mode()
def _run_in_batches(fn: Callable, data: torch.Tensor, batch: int, runtime: Runtime) -> torch.Tensor:
    if not len(data):  # a data-parallel rank's empty part
        return torch.empty(0, device=runtime.device)
    outs = []
    for start in range(0, len(data), batch):
        with runtime.autocast():
            outs.append(fn(runtime.batch(data[start : start + batch])))
    return torch.cat(outs)


def _optimizer(model: TransferModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone's trainable layers at ``lr * backbone_lr_scale``
    (discriminative learning rates: transferred weights move less) and the new heads at
    ``lr``; each group's ``lr_scale`` is applied by the schedule."""
    body = [p for p in model.body.parameters() if p.requires_grad]
    body_ids = {id(p) for p in body}
    heads = [p for p in model.trainable_parameters() if id(p) not in body_ids]
    groups = [
        {"params": g, "lr_scale": scale}
        for g, scale in ((body, cfg.backbone_lr_scale), (heads, 1.0))
        if g
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    # the fused kernel is ~7x faster on CPU for big layers (VGG's fc6 has 103M weights)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _lr_at(epoch: int, cfg: FinetuneConfig) -> float:
    if cfg.scheduler == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _class_weights(labels: np.ndarray, cfg: FinetuneConfig) -> torch.Tensor | None:
    if cfg.loss != "weighted":
        return None
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def _loss_fn(weights: torch.Tensor | None, runtime: Runtime, world: World) -> nn.Module:
    """Mean over the batch in one process; the sum over the rank's samples in data-parallel
    training (scaled to the global batch by :func:`_global_scale`)."""
    reduction = "mean" if world.size == 1 else "sum"
    weight = None if weights is None else weights.to(runtime.device)
    return nn.CrossEntropyLoss(weight=weight, reduction=reduction)


def _global_scale(targets: torch.Tensor, weights: torch.Tensor | None, world: World) -> float:
    """N / (the global batch's total weight): DDP averages N ranks' gradients of
    sum-over-own-samples losses, so this makes the step the one-process mean loss's."""
    total = len(targets) if weights is None else float(weights[targets].sum())
    return world.size / total


def train(
    model: TransferModel,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    cfg: FinetuneConfig,
    augment: AugmentConfig,
    runtime: Runtime,
    checkpoint_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Fine-tune ``model`` in place; ``order`` holds the (resampled) training indices.

    With a ``world`` of several ranks every rank calls this with the same arguments; rank 0's
    result is the one to publish (the others' ``val_prob`` is None)."""
    # imported here: scikit-learn (with pandas) would add seconds to every import of this
    # module
    from sklearn.metrics import f1_score

    model = runtime.prepare(model)
    online = augment.mode == "online"
    supervised = len(model.aux_heads) > 0  # deep supervision needs the full forward
    # the prefix is a fixed function of fixed images only when it is frozen and inputs do
    # not change between epochs (no online augmentation, no deep supervision through it)
    cacheable = bool(model.frozen_modules) and not online and not supervised
    halves = split_prefix(model.body) if cfg.runtime.cache_prefix and cacheable else None

    x_all = torch.from_numpy(np.array(images, dtype=np.float32))  # own, writable copy
    x_val = torch.from_numpy(np.ascontiguousarray(val_images, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    result = TrainResult(used_prefix_cache=halves is not None, ranks=world.size)

    transform = None
    step: nn.Module
    if halves is not None:
        prefix, suffix = halves
        model.eval()
        # frozen prefix: computed once for every training and validation image (each rank
        # its part; every rank then holds the training part of all of them)
        cache = world.gather_rows(
            _run_in_batches(
                lambda b: prefix(model.normalize(b)), world.part(x_all), cfg.batch_size, runtime
            )
        )
        val_cache = _run_in_batches(
            lambda b: prefix(model.normalize(b)), world.part(x_val), cfg.batch_size, runtime
        )
        step = _CachedStep(suffix, model.head)

        def train_input(idx: torch.Tensor) -> torch.Tensor:
            return runtime.batch(cache[idx].clone())

        def val_logits() -> torch.Tensor:
            return world.gather_rows(
                _run_in_batches(lambda b: model.head(suffix(b)), val_cache, cfg.batch_size, runtime)
            )
    else:
        transform = make_augment(augment) if online else None
        step = _FullStep(model)

        def train_input(idx: torch.Tensor) -> torch.Tensor:
            batch = x_all[idx]
            if transform is not None and len(batch):
                batch = torch.from_numpy(np.stack([apply(transform, img) for img in batch.numpy()]))
            return runtime.batch(batch)

        def val_logits() -> torch.Tensor:
            return world.gather_rows(
                _run_in_batches(model, world.part(x_val), cfg.batch_size, runtime)
            )

    optimizer = _optimizer(model, cfg)
    class_weights = _class_weights(np.asarray(labels)[order], cfg)
    loss_fn = _loss_fn(class_weights, runtime, world)
    scaler = torch.amp.GradScaler("cuda") if runtime.uses_grad_scaler else None
    ckpt = Checkpoint(checkpoint_dir)
    start_epoch, best_state, stale = 0, None, 0
    loaded = ckpt.load(model, optimizer)
    resumed = None if loaded is None else loaded[0]
    if resumed is not None:
        start_epoch = resumed["epoch"] + 1
        result.history = resumed["history"]
        result.best_epoch, result.best_val_f1 = resumed["best_epoch"], resumed["best_val_f1"]
        stale = resumed["stale"]
        if world.is_writer:
            best_state = load_file(str(checkpoint_dir / "best.safetensors"))
        log.info("resuming fine-tuning at epoch %d", start_epoch + 1)
    if not world.all_equal(f"{start_epoch}"):
        raise CadError(
            f"data-parallel ranks found different checkpoints in {checkpoint_dir}: the "
            "workdir (its scratch folder included) must be one path every rank shares"
        )
    if world.size > 1:
        step = data_parallel(step, runtime, find_unused=halves is None)
    elif halves is not None and cfg.runtime.compile_step:
        # the trainable part only (its parameters are shared with ``model``, so the
        # optimizer and checkpoints see every update); batch sizes vary at an epoch's end
        # fallback_random: dropout draws from torch's generator, so masks (and losses) are eager's
        step = torch.compile(step, dynamic=None, options={"fallback_random": True})

    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout masks depend only on the epoch
        if transform is not None:  # so do online augmentations: a resumed epoch is the same
            transform.set_random_state(seed=cfg.seed * 1000 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(epoch, cfg) * group.get("lr_scale", 1.0)
        model.train()
        step.train()  # a SyncBatchNorm copy in the step follows the model (GPU ranks)
        perm = torch.from_numpy(rng.permutation(order))
        total, seen = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            mine = world.part(idx)  # the whole batch in one process
            target = runtime.batch(y_all[mine])
            with runtime.autocast():
                main, *aux = step(train_input(mine))
                loss = loss_fn(main.float(), target)
                for logits in aux:
                    loss = loss + AUX_WEIGHT * loss_fn(logits.float(), target)
            if world.size > 1:
                loss = loss * _global_scale(y_all[idx], class_weights, world)
            optimizer_step(loss, optimizer, scaler)
            total += float(loss.detach()) * len(idx) / world.size
            seen += len(idx)
            if progress:
                progress(len(idx))
        total = world.total(total)
        model.eval()
        step.eval()
        logits = val_logits().float()
        val_loss = float(
            nn.functional.cross_entropy(
                logits.cpu(), torch.from_numpy(np.asarray(val_labels, dtype=np.int64))
            )
        )
        val_prob = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        # rank 0's figure decides early stopping on every rank
        val_f1 = world.from_writer(float(f1_score(val_labels, val_prob >= 0.5, zero_division=0)))
        result.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(seen, 1),
                "val_loss": val_loss,
                "val_f1": val_f1,
                "lr": _lr_at(epoch, cfg),
            }
        )
        (log.info if world.is_writer else log.debug)(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val F1 %.3f",
            epoch + 1,
            cfg.epochs,
            total / max(seen, 1),
            val_loss,
            val_f1,
        )
        if val_f1 > result.best_val_f1:
            result.best_val_f1, result.best_epoch, stale = val_f1, epoch + 1, 0
            if world.is_writer:
                best_state = {
                    k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
                }
            if checkpoint_dir is not None and world.is_writer:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_file(best_state, str(checkpoint_dir / ".best.tmp"))
                os.replace(checkpoint_dir / ".best.tmp", checkpoint_dir / "best.safetensors")
        else:
            stale += 1
        if world.is_writer:
            ckpt.save(
                model,
                optimizer,
                {
                    "epoch": epoch,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_val_f1": result.best_val_f1,
                    "stale": stale,
                },
            )
    if world.size > 1:
        result.weights_sha256 = state_digest(model)
        if not world.all_equal(result.weights_sha256):
            raise CadError(
                "data-parallel ranks ended fine-tuning with different weights; rerun with "
                "--set finetune.runtime.distributed=off and report this as a bug"
            )
    if not world.is_writer:
        return result
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.val_prob = predict_proba(model, val_images, runtime, cfg.batch_size)
    return result
