"""Fine-tuning: cut at the connection node, freeze up to the fine-tuning node, train the rest.

Under torchrun (:mod:`cad.distributed`) rank 0 runs this stage as always and first announces
it (its settings and input artifacts' keys) to the other ranks, which rebuild the same model
and data from the shared store (:mod:`cad.pipeline.data_parallel`) and train beside it;
only rank 0 writes the artifact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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


@dataclass
class _Job:
    """Everything the training loop needs, built the same way on every rank."""

    model: Any  # TransferModel
    spec: Any  # BackboneSpec
    finetune_node: str
    connection: str
    aux_nodes: tuple[str, ...]
    order: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    runtime: Any  # cad.device.Runtime

    def train(
        self,
        cfg: FinetuneConfig,
        training: TrainingSet,
        scratch: Path,
        progress: Callable[[int], None] | None,
    ) -> Any:
        from cad.distributed import current
        from cad.finetune.train import train

        return train(
            self.model,
            np.asarray(training.images()),
            training.labels(),
            self.order,
            self.val_images,
            self.val_labels,
            cfg,
            training.augment,
            self.runtime,
            scratch,
            progress,
            current(),
        )


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
        from cad.distributed import current

        precision = resolved_precision(settings.finetune.precision)
        ranks = current().size  # N data-parallel ranks round differently from one process
        return {**settings.identity(), "precision": precision} | (
            {"data_parallel": ranks} if ranks > 1 else {}
        )

    def build(
        self,
        settings: FinetuneSettings,
        probe: ProbeResult,
        features: FeatureSet,
        training: TrainingSet,
        images: ImageSet,
        splits: Splits,
        previous: TrainedModel | None,
        pretrained: PretrainedWeights | None,
    ) -> _Job:
        """The seeded model and the data (a pure function of settings and inputs)."""
        import torch

        from cad.backbones import get_spec
        from cad.device import on_local_rank, select_runtime
        from cad.distributed import current
        from cad.finetune.model import build_transfer_model
        from cad.finetune.rounds import backbone_from_package
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
        val_images, val_samples = images.subset(splits.assignment().val)
        val_labels = column(val_samples, "label").astype(np.int64)
        runtime = select_runtime(cfg.precision, cfg.channels_last)
        runtime = on_local_rank(runtime, current().local_rank)
        return _Job(
            model, spec, finetune_node, connection, aux_nodes, training.order(), val_images,
            val_labels, runtime,
        )  # fmt: skip

    def follow(self, settings: FinetuneSettings, inputs: dict[str, Any], scratch: Path) -> None:
        """A rank > 0's part of a data-parallel run of this stage: build and train beside
        rank 0, write nothing (rank 0 publishes)."""
        get = inputs.get
        job = self.build(
            settings, inputs["probe"], inputs["features"], inputs["training"], inputs["images"],
            inputs["splits"], get("previous"), get("pretrained"),
        )  # fmt: skip
        job.train(settings.finetune, inputs["training"], scratch, None)

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

        from cad.artifacts.model_card import render_card
        from cad.device import describe
        from cad.distributed import current
        from cad.evaluate.calibration import fit_calibration
        from cad.evaluate.metrics import choose_threshold
        from cad.evaluate.plots import plot_training_curves
        from cad.finetune.model import output_shape
        from cad.finetune.package import save_package

        given = {"probe": probe, "features": features, "training": training, "images": images,
                 "splits": splits, "previous": previous, "pretrained": pretrained}  # fmt: skip
        current().announce(
            {
                "stage": self.name,
                "settings": settings.model_dump(mode="json"),
                "inputs": {n: [a.stage, a.key] for n, a in given.items() if a is not None},
                "scratch": ctx.scratch.name,  # under each rank's own (shared) workdir
            }
        )  # the other ranks (if any) build the same job and train beside this one
        job = self.build(settings, probe, features, training, images, splits, previous, pretrained)
        cfg, spec, inputs, index = settings.finetune, job.spec, training.spec, features.index()
        model, order, val_labels = job.model, job.order, job.val_labels
        finetune_node, connection, aux_nodes = job.finetune_node, job.connection, job.aux_nodes
        total = len(order) * cfg.epochs
        with progress(f"finetune {spec.name} r{settings.round}", total, "slices") as bar:
            result = job.train(cfg, training, ctx.scratch, bar)
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
        card = render_card(meta, splits.assignment().sizes)  # test metrics: evaluate adds them
        denoiser = denoised.denoiser if denoised else None
        save_package(model, meta, package, denoiser=denoiser, card=card)
        TrainedModel.write_history(result.history, history)
        plot_training_curves(result.history, curves, settings.title)
        return {
            "items": len(order) * len(result.history),
            "threshold": threshold,
            "best_val_f1": result.best_val_f1,
            "prefix_cache": result.used_prefix_cache,
            "runtime": describe(job.runtime),
        } | (
            {"data_parallel": {"ranks": result.ranks, "weights_sha256": result.weights_sha256}}
            if result.ranks > 1
            else {}
        )
