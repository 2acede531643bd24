"""Per-backbone layer stages: extract (features at every candidate node) -> probe (SVM F1).

Where a chain's backbone comes from (:class:`BackboneSource`) is shared with fine-tuning:
fresh weights seeded identically in every stage, or round 1's package in round 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cad.artifacts.features import FeatureIndex, FeatureSet, NodeInfo
from cad.artifacts.images import TrainingSet
from cad.artifacts.model_package import TrainedModel
from cad.artifacts.pretrained import PretrainedWeights
from cad.artifacts.probe import ProbeChoice, ProbeResult
from cad.artifacts.splits import Splits
from cad.config import BackboneConfig, BalanceConfig, ExtractConfig, ProbeConfig
from cad.data.samples import column
from cad.log import progress
from cad.pipeline.stage import Settings, Stage, StageContext

BACKBONE_SEED = 0  # random weights must be the same in extract and finetune


def load_backbone(
    backbone: BackboneConfig,
    in_chans: int,
    previous: TrainedModel | None,
    pretrained: PretrainedWeights | None = None,
):
    """(network, weights description, candidate nodes) for one chain's round.

    Round 1 builds the registry's network with its configured weights (random weights seeded
    with ``BACKBONE_SEED``; ``pretrained`` when they come from the pretrain stage); round 2
    rebuilds round 1's network from its package and only considers nodes up to round 1's
    connection node (the rest was discarded by round 1).
    """
    import torch

    from cad.backbones import create_backbone, get_spec
    from cad.finetune.rounds import backbone_from_package

    spec = get_spec(backbone.name)
    nodes = list(backbone.nodes or spec.nodes)
    if previous is None:
        with torch.random.fork_rng():
            torch.manual_seed(BACKBONE_SEED)
            loaded = create_backbone(
                spec.name,
                weights=backbone.weights,
                in_chans=in_chans,
                fallback=backbone.fallback,
                pretrained=None if pretrained is None else pretrained.weights,
                pretrained_label=pretrained.record().label if pretrained else "pretrain",
            )
        return loaded.model, loaded.weights_source, nodes
    model, meta, _ = backbone_from_package(previous.package)
    cut = nodes.index(meta.nodes.connection)
    source = f"round {meta.round} model ({meta.weights_source})"
    return model, source, nodes[: cut + 1]


class ExtractSettings(Settings):
    backbone: BackboneConfig
    round: int
    extract: ExtractConfig


class ExtractStage(Stage[ExtractSettings]):
    name = "extract"
    summary = (
        "one forward pass per batch returns every candidate node "
        "(`create_feature_extractor`), pooled over the whole map and, with "
        "`extract.grid: [1, 2]`, over each quadrant too, stored per node"
    )
    settings_type = ExtractSettings
    inputs = {"training": TrainingSet, "previous": TrainedModel, "pretrained": PretrainedWeights}
    optional_inputs = frozenset({"previous", "pretrained"})
    output = FeatureSet

    def identity(self, settings: ExtractSettings) -> dict[str, Any]:
        from cad.device import resolved_precision

        cfg = settings.extract
        precision = "cpu-int8" if cfg.quantize == "int8" else resolved_precision(cfg.precision)
        return {**settings.identity(), "precision": precision}

    def run(
        self,
        ctx: StageContext,
        settings: ExtractSettings,
        training: TrainingSet,
        previous: TrainedModel | None = None,
        pretrained: PretrainedWeights | None = None,
    ) -> dict[str, Any]:
        from cad.backbones import get_spec, node_shapes
        from cad.device import describe, select_runtime
        from cad.features.extract import extract_features
        from cad.finetune.model import Normalize

        spec, inputs = get_spec(settings.backbone.name), training.spec
        cfg, runtime_cfg = settings.extract, settings.extract.runtime
        model, weights_source, nodes = load_backbone(
            settings.backbone, inputs.in_chans, previous, pretrained
        )
        int8 = cfg.quantize == "int8"
        runtime = select_runtime("fp32" if int8 else cfg.precision, runtime_cfg.channels_last)
        images = training.images()
        with progress(f"extract {spec.name} r{settings.round}", len(images), "slices") as advance:
            features = extract_features(
                model,
                nodes,
                images,
                Normalize(spec.mean, spec.std, inputs.in_chans),
                runtime,
                runtime_cfg.batch_size,
                cfg.pooling,
                advance,
                compile=runtime_cfg.compile,
                compile_min_tflop=runtime_cfg.compile_min_tflop,
                compile_max_gflop_per_image=runtime_cfg.compile_max_gflop_per_image,
                quantize=cfg.quantize,
                grid=cfg.grid,
            )
        shapes = node_shapes(model, nodes, inputs.size, inputs.in_chans)
        depth = dict(zip(spec.nodes, spec.node_depths, strict=True))
        info = [
            NodeInfo(node=n, depth=depth.get(n, i), shape=list(shapes[n]))
            for i, n in enumerate(nodes)
        ]
        ran = f"{runtime.device.type} (int8, quantized)" if int8 else describe(runtime)
        index = FeatureIndex(nodes=info, weights_source=weights_source, runtime=ran)
        FeatureSet.write(ctx.out, features, index)
        return {"items": len(images), "weights_source": weights_source}


class ProbeSettings(Settings):
    probe: ProbeConfig
    balance: BalanceConfig
    title: str  # plot title, e.g. "vgg16 round 1"


def chance_levels(labels: np.ndarray) -> tuple[float, float, float]:
    """(prevalence, F1 of all-positive = 2p/(1+p), F1 of guessing at the prevalence = p)."""
    p = float(np.mean(labels)) if len(labels) else 0.0
    return p, (2 * p / (1 + p) if p > 0 else 0.0), p


class ProbeStage(Stage[ProbeSettings]):
    name = "probe"
    summary = (
        "scaler → (resampler) → SVM per node, F1 by patient-grouped CV; layer table + "
        "F1-vs-depth plot; the fine-tuning node chosen"
    )
    settings_type = ProbeSettings
    inputs = {"features": FeatureSet, "training": TrainingSet, "splits": Splits}
    output = ProbeResult

    def run(
        self,
        ctx: StageContext,
        settings: ProbeSettings,
        features: FeatureSet,
        training: TrainingSet,
        splits: Splits,
    ) -> dict[str, Any]:
        from cad.evaluate.plots import plot_layer_scores
        from cad.probe.svm import choose_finetune_node, score_nodes

        index = features.index()
        samples = training.samples()
        folds = splits.assignment().sample_folds(samples)
        labels = column(samples, "label").astype(np.int64)
        depths = {n.node: n.depth for n in index.nodes}
        scores = score_nodes(
            features.load(), depths, labels, folds, settings.probe, settings.balance
        )
        best = choose_finetune_node(scores)
        prevalence, all_positive, by_prevalence = chance_levels(labels)
        choice = ProbeChoice(
            finetune=best.node,
            finetune_f1=best.f1_mean,
            prevalence=prevalence,
            chance_f1_all_positive=all_positive,
            chance_f1_prevalence=by_prevalence,
        )
        ProbeResult.write(ctx.out, scores, choice)
        plot_layer_scores(
            [s.depth for s in scores],
            [s.node for s in scores],
            [s.f1_mean for s in scores],
            [s.f1_std for s in scores],
            best.node,
            ProbeResult.plot_in(ctx.out),
            settings.title,
        )
        return {"items": len(scores) * len(np.unique(folds)), **choice.model_dump()}
