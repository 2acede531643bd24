"""The ``pretrain:`` section: cad's offline pretrained source and its budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cad.config.base import Precision, Runtime, Section


class PretrainRuntime(Runtime):
    checkpoint_every: int = Field(25, ge=1, description="steps between resumable checkpoints")


class ContrastiveConfig(Section):
    """Self-supervised pretraining (SimCLR) on the training patients' unlabeled slices."""

    steps: int = Field(200, ge=1, le=1_000_000, description="the budget: optimizer steps")
    batch_size: int = Field(
        64, ge=2, le=4096, description="slices per step (two views each: 2x images)"
    )
    size: int = Field(
        64, ge=16, le=1024, description="view side (raised to a backbone's minimum size)"
    )
    crop_scale: float = Field(0.25, gt=0, le=1, description="smallest crop, share of the area")
    temperature: float = Field(0.2, gt=0, le=10)
    lr: float = Field(1e-3, gt=0, le=10)
    seed: int = 0


class PretrainConfig(Section):
    """cad's offline pretraining source (``weights: pretrain``). ``shapes``: the backbone
    learns to tell apart procedurally rendered shape classes (no patient data at all);
    ``contrastive``: SimCLR on the training patients' slices (pixels only, never a label,
    never a validation or test patient); ``shapes+contrastive``: the first, then the second."""

    method: Literal["shapes", "contrastive", "shapes+contrastive"] = "shapes"
    steps: int = Field(300, ge=1, le=1_000_000, description="the budget: optimizer steps")
    batch_size: int = Field(64, ge=2, le=4096)
    size: int = Field(
        48, ge=16, le=1024, description="image side (raised to a backbone's minimum size)"
    )
    lr: float = Field(2e-3, gt=0, le=10)
    unnormalized_lr_scale: float = Field(
        0.1,
        gt=0,
        le=1,
        description="lr multiplier for networks without normalization layers (VGG, AlexNet, "
        "LeNet): at 2e-3 VGG16 stays at chance loss, at 2e-4 it learns (measured, README)",
    )
    weight_decay: float = Field(0.05, ge=0, le=10)
    warmup: float = Field(0.15, ge=0, lt=1, description="share of steps warming up the lr")
    precision: Precision = "auto"
    seed: int = 0
    contrastive: ContrastiveConfig = ContrastiveConfig()
    runtime: PretrainRuntime = PretrainRuntime()

    @property
    def uses_shapes(self) -> bool:
        return self.method.startswith("shapes")

    @property
    def uses_slices(self) -> bool:
        return self.method.endswith("contrastive")
