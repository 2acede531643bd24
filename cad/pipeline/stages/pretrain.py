"""The pretrain stage: a backbone's weights from cad's offline source (``weights: pretrain``).

With ``pretrain.method: shapes`` it reads no artifact: the source is procedural, so the
weights are the same for every data set, split and label. A contrastive method reads the
images and the split, and :func:`training_slices` hands the training loop the training
patients' pixels alone: no label, no validation or test patient. The user-level cache
shares the weights across workdirs and pipelines (keyed by those pixels, not by labels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cad.artifacts.images import ImageSet
from cad.artifacts.pretrained import PretrainedWeights
from cad.artifacts.splits import Splits
from cad.config import PretrainConfig
from cad.errors import ConfigError
from cad.pipeline.stage import Settings, Stage, StageContext


class PretrainSettings(Settings):
    backbone: str
    in_chans: int
    pretrain: PretrainConfig


def training_slices(images: ImageSet, splits: Splits) -> torch.Tensor:
    """The training patients' slices (N, C, H, W) float32, in row order: pixels only."""
    train = set(splits.assignment().train)
    rows = np.array([i for i, s in enumerate(images.samples()) if s.patient in train], np.int64)
    if len(rows) < 2:
        raise ConfigError(
            f"pretrain.method: contrastive pretraining needs training slices; the split has "
            f"{len(rows)} (more patients, or pretrain.method=shapes)"
        )
    return torch.from_numpy(np.ascontiguousarray(images.images()[rows], dtype=np.float32))


class PretrainStage(Stage[PretrainSettings]):
    name = "pretrain"
    summary = (
        "the backbone pretrained on procedural shape classes and/or contrastively on the "
        "training patients' unlabeled slices, from the user-level weights cache or trained now"
    )
    settings_type = PretrainSettings
    inputs = {"images": ImageSet, "splits": Splits}
    optional_inputs = frozenset({"images", "splits"})  # read only by contrastive methods
    output = PretrainedWeights

    def identity(self, settings: PretrainSettings) -> dict[str, Any]:
        from cad.pretrain.cache import weights_key

        # a contrastive key also hashes the pixels; the inputs' keys stand in for them here
        key = weights_key(settings.backbone, settings.in_chans, settings.pretrain)
        return {**settings.identity(), "weights_key": key}

    def run(
        self,
        ctx: StageContext,
        settings: PretrainSettings,
        images: ImageSet | None = None,
        splits: Splits | None = None,
    ) -> dict[str, Any]:
        from cad.pretrain import ensure_pretrained, link_into

        slices = None
        if settings.pretrain.uses_slices:
            if images is None or splits is None:
                raise TypeError("a contrastive pretrain stage reads the images and the split")
            slices = training_slices(images, splits)
        cached = ensure_pretrained(settings.backbone, settings.in_chans, settings.pretrain, slices)
        link_into(cached, ctx.out)
        record = cached.record
        return {
            "items": record.steps,
            "weights_source": record.label,
            "cache_reused": cached.reused,
            "source_accuracy": record.source_accuracy,
        }
