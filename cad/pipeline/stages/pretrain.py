"""The pretrain stage: a backbone's weights from cad's offline source (``weights: pretrain``).

It reads no artifact: no patient image and no label reaches the weights (the source is
procedural), so they are the same for every data set, split and label, and the user-level
cache shares them across workdirs and pipelines.
"""

from __future__ import annotations

from typing import Any

from cad.artifacts.pretrained import PretrainedWeights
from cad.config import PretrainConfig
from cad.pipeline.stage import Settings, Stage, StageContext


class PretrainSettings(Settings):
    backbone: str
    in_chans: int
    pretrain: PretrainConfig


class PretrainStage(Stage[PretrainSettings]):
    name = "pretrain"
    summary = (
        "the backbone pretrained on procedural shape classes (no patient data), from the "
        "user-level weights cache or trained now"
    )
    settings_type = PretrainSettings
    output = PretrainedWeights

    def identity(self, settings: PretrainSettings) -> dict[str, Any]:
        from cad.pretrain.cache import weights_key

        key = weights_key(settings.backbone, settings.in_chans, settings.pretrain)
        return {**settings.identity(), "weights_key": key}

    def run(self, ctx: StageContext, settings: PretrainSettings) -> dict[str, Any]:
        from cad.pretrain import ensure_pretrained, link_into

        cached = ensure_pretrained(settings.backbone, settings.in_chans, settings.pretrain)
        link_into(cached, ctx.out)
        record = cached.record
        return {
            "items": record.steps,
            "weights_source": record.label,
            "cache_reused": cached.reused,
            "source_accuracy": record.source_accuracy,
        }
