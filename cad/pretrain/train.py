"""Pretraining one backbone, resumable step by step: on the procedural source, or
contrastively on the training patients' slices.

Shapes: the network learns to classify :class:`~cad.pretrain.shapes.ShapeSource` images
with its own output layer (the first ``classes`` logits; a linear layer is added, used only
here, when a network has fewer outputs or outputs an image). Contrastive: SimCLR
(:mod:`cad.pretrain.contrastive`) with a projection head used only here. Either way the
weights it returns have exactly the registry network's keys. AdamW with linear warm-up and
cosine decay; bf16 autocast where the CPU has it (on a GPU bf16, or fp16 with loss
scaling). A checkpoint every ``checkpoint_every`` steps holds the model, the optimizer, the
step and both random streams, so a killed run resumes where it stopped and ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cad.backbones import create_backbone, get_spec
from cad.checkpoint import Checkpoint
from cad.config import PretrainConfig
from cad.device import optimizer_step, select_runtime
from cad.finetune.model import Normalize
from cad.pretrain.contrastive import Projected, SliceViews, nt_xent, pooled_output
from cad.pretrain.shapes import ShapeSource

log = logging.getLogger("cad")
BACKBONE_SEED = 0


@dataclass
class PretrainResult:
    state: dict[str, torch.Tensor]
    size: int  # the image side actually used
    classes: int  # shapes: the source's classes; contrastive: candidates per view
    loss: list[float] = field(default_factory=list)  # mean loss per 1/20 of the budget
    accuracy: float = 0.0  # source-task accuracy over the last 1/20 (chance: 1/classes)
    resumed_at: int = 0  # the step a checkpoint let it start from


def effective_size(name: str, cfg: PretrainConfig, contrastive: bool = False) -> int:
    """The image side of a phase, raised to the backbone's smallest working input."""
    return max(cfg.contrastive.size if contrastive else cfg.size, get_spec(name).min_size)


class _Logits(nn.Module):
    """The backbone's own output as source-task logits (an extra linear layer if needed)."""

    def __init__(self, backbone: nn.Module, classes: int, in_chans: int, size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classes = classes
        with torch.no_grad():
            backbone.eval()
            dim = pooled_output(backbone, torch.zeros(1, in_chans, size, size)).shape[1]
        self.extra = nn.Linear(dim, classes) if dim < classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = pooled_output(self.backbone, x)
        return self.extra(out) if self.extra is not None else out[:, : self.classes]


def pretrain(
    name: str,
    in_chans: int,
    cfg: PretrainConfig,
    checkpoint_dir: Path | None = None,
    advance: Callable[[int], None] = lambda n: None,
    slices: torch.Tensor | None = None,
    start: dict[str, torch.Tensor] | None = None,
) -> PretrainResult:
    """Pretrain backbone ``name``: on the shapes source for ``cfg.steps`` steps, or, given
    ``slices`` (the training patients' pixels, N x C x H x W), contrastively for
    ``cfg.contrastive.steps`` steps from ``start`` (a state of the registry network) or
    from random weights. Returns the registry network's state."""
    spec, contrastive = get_spec(name), slices is not None
    size = effective_size(name, cfg, contrastive)
    budget = cfg.contrastive if contrastive else cfg  # steps, batch_size, lr, seed
    runtime = select_runtime(cfg.precision, channels_last=False)
    with torch.random.fork_rng():
        torch.manual_seed(BACKBONE_SEED)
        backbone = create_backbone(name, weights="random", in_chans=in_chans).model
        if start is not None:
            backbone.load_state_dict(start)
        aux = _detach_aux_heads(backbone)
        if slices is not None:
            views = SliceViews(slices, cfg.contrastive)
            model: nn.Module = Projected(backbone, in_chans, size)
            classes = views.candidates
        else:
            source = ShapeSource(in_chans, cfg.seed)
            model, classes = _Logits(backbone, source.classes, in_chans, size), source.classes
        model = model.to(runtime.device)
    normalize = Normalize(spec.mean, spec.std, in_chans).to(runtime.device)
    base_lr = budget.lr if _normalized(backbone) else budget.lr * cfg.unnormalized_lr_scale
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=base_lr,
        fused=True,  # ~7x faster on CPU for big layers (VGG's fc6 has 103M weights)
    )
    scaler = torch.amp.GradScaler("cuda") if runtime.uses_grad_scaler else None
    data = torch.Generator().manual_seed(budget.seed)
    ckpt = Checkpoint(checkpoint_dir)
    result = PretrainResult({}, size, classes)
    every = max(1, budget.steps // 20)  # loss-curve points: fixed by the budget, not by runtime
    step, window = 0, {"loss": 0.0, "correct": 0, "seen": 0}

    def objective() -> tuple[torch.Tensor, int, int]:
        """One batch's loss, how many of its items were right, and how many there were."""
        if slices is not None:
            images = views.batch(budget.batch_size, size, data).to(runtime.device)
            with runtime.autocast():
                z = model(normalize(images))
            return (*nt_xent(z, cfg.contrastive.temperature), len(images))
        images, labels = source.batch(budget.batch_size, size, data)
        images, labels = images.to(runtime.device), labels.to(runtime.device)
        with runtime.autocast():
            logits = model(normalize(images)).float()
        correct = int((logits.argmax(1) == labels).sum())
        return F.cross_entropy(logits, labels), correct, len(labels)

    with torch.random.fork_rng():
        torch.manual_seed(budget.seed)
        loaded = ckpt.load(model, optimizer)
        if loaded is not None:
            state, extra = loaded
            step, result.loss, window = state["step"], state["loss"], state["window"]
            data.set_state(extra["data_rng"])
            torch.set_rng_state(extra["torch_rng"])
            result.resumed_at = step
            advance(step)
            log.info("pretrain %s: resuming at step %d of %d", name, step + 1, budget.steps)
        model.train()
        while step < budget.steps:
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, budget.steps, cfg.warmup, base_lr)
            loss, correct, seen = objective()
            optimizer_step(loss, optimizer, scaler)
            step += 1
            window["loss"] += float(loss.detach())
            window["correct"] += correct
            window["seen"] += seen
            advance(1)
            if step % every == 0 or step == budget.steps:
                batches = max(window["seen"] / seen, 1)
                result.loss.append(round(window["loss"] / batches, 4))
                result.accuracy = window["correct"] / max(window["seen"], 1)
                window = {"loss": 0.0, "correct": 0, "seen": 0}
            if step % cfg.runtime.checkpoint_every == 0 and step < budget.steps:
                extra = {"data_rng": data.get_state(), "torch_rng": torch.get_rng_state()}
                state = {"step": step, "loss": result.loss, "window": window}
                ckpt.save(model, optimizer, state, extra)
    for attr, module in aux.items():  # untrained, but their keys stay in the state dict
        setattr(backbone, attr, module)
    result.state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    return result


_AUX_HEADS = ("AuxLogits", "aux1", "aux2")  # Inception v3, GoogLeNet


def _detach_aux_heads(backbone: nn.Module) -> dict[str, nn.Module]:
    """Take the auxiliary classifiers out while pretraining (they need inputs near 299 px,
    and the source task does not need them); returned to be put back afterwards."""
    out = {}
    for attr in _AUX_HEADS:
        module = getattr(backbone, attr, None)
        if isinstance(module, nn.Module):
            out[attr] = module
            setattr(backbone, attr, None)
    return out


def _normalized(backbone: nn.Module) -> bool:
    """Whether the network normalizes its activations (batch/group/layer/instance norm)."""
    kinds = (
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
        nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d,
    )  # fmt: skip
    return any(isinstance(m, kinds) for m in backbone.modules())


def _lr(step: int, steps: int, warmup: float, base_lr: float) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
