"""Fine-tuning: cut at the connection node, freeze up to the fine-tuning node, train the rest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from cad.artifacts.features import FeatureSet
from cad.artifacts.images import DenoisedImages, ImageSet, TrainingSet
from cad.artifacts.model_package import DenoiserSpec, HeadSpec, ModelMeta, Nodes, TrainedModel
from cad.artifacts.pretrained import PretrainedWeights
from cad.artifacts.probe import ProbeResult
from cad.artifacts.splits import Splits
from cad.config import BackboneConfig, FinetuneConfig
from cad.data.samples import column
from cad.log import progress
from cad.pipeline.stage import Settings, Stage, StageContext
from cad.pipeline.stages.layers import load_backbone

CLASSES = ["non-tumour", "tumour"]


class FinetuneSettings(Settings):
    backbone: BackboneConfig
    round: int
    finetune: FinetuneConfig
    title: str


def supervised_aux_nodes(spec: Any, finetune: str, connection: str) -> tuple[str, ...]:
    """Auxiliary-classifier nodes inside the trainable part (after the fine-tuning node, up
    to the connection node): only there can deep supervision change anything."""
    order = list(spec.nodes)
    lo, hi = order.index(finetune), order.index(connection)
    return tuple(n for n in spec.aux_nodes if n in order and lo < order.index(n) <= hi)


class FinetuneStage(Stage[FinetuneSettings]):
    name = "finetune"
    summary = (
        "backbone cut at the connection node + global pool → Linear → ReLU → Dropout → Linear "
        "head; frozen prefix cached once; early stopping on validation F1; threshold chosen on "
        "validation; model package"
    )
    settings_type = FinetuneSettings
    inputs = {
        "probe": ProbeResult,
        "features": FeatureSet,
        "training": TrainingSet,
        "images": ImageSet,
        "splits": Splits,
        "previous": TrainedModel,
        "pretrained": PretrainedWeights,
    }
    optional_inputs = frozenset({"previous", "pretrained"})
    output = TrainedModel

    def identity(self, settings: FinetuneSettings) -> dict[str, Any]:
        from cad.device import resolved_precision

        precision = resolved_precision(settings.finetune.precision)
        return {**settings.identity(), "precision": precision}

    def run(
        self,
        ctx: StageContext,
        settings: FinetuneSettings,
        probe: ProbeResult,
        features: FeatureSet,
        training: TrainingSet,
        images: ImageSet,
        splits: Splits,
        previous: TrainedModel | None = None,
        pretrained: PretrainedWeights | None = None,
    ) -> dict[str, Any]:
        import torch

        from cad.backbones import get_spec
        from cad.device import describe, select_runtime
        from cad.evaluate.calibration import fit_calibration
        from cad.evaluate.metrics import choose_threshold
        from cad.evaluate.plots import plot_training_curves
        from cad.finetune.model import build_transfer_model, output_shape
        from cad.finetune.package import save_package
        from cad.finetune.rounds import backbone_from_package
        from cad.finetune.train import train
        from cad.probe.nodes import choose_connection_node

        cfg, spec, inputs = settings.finetune, get_spec(settings.backbone.name), training.spec
        index = features.index()
        shapes: dict[str, Sequence[int]] = {n.node: n.shape for n in index.nodes}
        finetune_node = probe.choice().finetune
        nodes = [n.node for n in index.nodes]
        connection = choose_connection_node(nodes, shapes, finetune_node, cfg.connection)
        backbone, _, _ = load_backbone(settings.backbone, inputs.in_chans, previous, pretrained)
        torch.manual_seed(cfg.seed)
        aux_nodes = supervised_aux_nodes(spec, finetune_node, connection)
        model = build_transfer_model(
            backbone,
            finetune_node,
            connection,
            mean=spec.mean,
            std=spec.std,
            in_chans=inputs.in_chans,
            size=inputs.size,
            hidden=cfg.hidden,
            dropout=cfg.dropout,
            pool=cfg.pool,
            aux_nodes=aux_nodes,
            freeze_prefix=cfg.freeze,
        )
        if previous is not None:
            _, before, head = backbone_from_package(previous.package)
            if before.nodes.connection == connection:
                model.head.load_state_dict(head)  # same attachment point: continue its head
        order = training.order()
        val_images, val_samples = images.subset(splits.assignment().val)
        val_labels = column(val_samples, "label").astype(np.int64)
        runtime = select_runtime(cfg.precision, cfg.channels_last)
        with progress(
            f"finetune {spec.name} r{settings.round}", len(order) * cfg.epochs, "slices"
        ) as bar:
            result = train(
                model,
                np.asarray(training.images()),
                training.labels(),
                order,
                val_images,
                val_labels,
                cfg,
                training.augment,
                runtime,
                ctx.scratch,
                bar,
            )
        assert result.val_prob is not None
        calibration = fit_calibration(cfg.calibration, val_labels, result.val_prob)
        val_prob = result.val_prob if calibration is None else calibration.apply(result.val_prob)
        threshold = choose_threshold(val_labels, val_prob)  # on the calibrated scale
        denoised = images if isinstance(images, DenoisedImages) else None
        meta = ModelMeta(
            backbone=spec.name,
            round=settings.round,
            weights_source=index.weights_source,
            nodes=Nodes(finetune=finetune_node, connection=connection),
            aux_nodes=list(aux_nodes),
            frozen=cfg.freeze,
            head=HeadSpec(hidden=cfg.hidden, dropout=cfg.dropout, pool=cfg.pool),
            classes=CLASSES,
            in_chans=inputs.in_chans,
            input=inputs,
            mean=list(spec.mean),
            std=list(spec.std),
            threshold=threshold,
            training_data_hash=hashlib.sha256(training.key.encode()).hexdigest()[:16],
            connection_shape=list(
                output_shape(model.body, inputs.in_chans, inputs.size, "features")
            ),
            frozen_modules=len(model.frozen_modules),
            trainable_params=int(sum(p.numel() for p in model.trainable_parameters())),
            frozen_params=int(sum(p.numel() for p in model.frozen_parameters().values())),
            best_epoch=result.best_epoch,
            best_val_f1=result.best_val_f1,
            denoiser=DenoiserSpec(**denoised.denoiser_spec) if denoised is not None else None,
            calibration=calibration,
        )
        package, history, curves = TrainedModel.files_in(ctx.out)
        model = model.float().to("cpu").to(memory_format=torch.contiguous_format)
        save_package(model, meta, package, denoiser=denoised.denoiser if denoised else None)
        TrainedModel.write_history(result.history, history)
        plot_training_curves(result.history, curves, settings.title)
        return {
            "items": len(order) * len(result.history),
            "threshold": threshold,
            "best_val_f1": result.best_val_f1,
            "prefix_cache": result.used_prefix_cache,
            "runtime": describe(runtime),
        }
