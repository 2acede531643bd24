"""Per-backbone stages: extract -> probe -> finetune -> evaluate (one chain per round).

A chain only reads its inputs' published files, so chains of different backbones are
independent and can later fan out over processes or machines.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cad.backbones import create_backbone, get_spec
from cad.config import BackboneConfig, PipelineConfig
from cad.data.samples import column, read_samples
from cad.device import Runtime, describe, select_runtime
from cad.evaluate.metrics import bootstrap_metrics, choose_threshold
from cad.evaluate.plots import (
    plot_confusion,
    plot_layer_scores,
    plot_pr,
    plot_roc,
    plot_training_curves,
)
from cad.features.extract import extract_features, load_features, save_features
from cad.finetune.model import Normalize, build_transfer_model, output_shape
from cad.finetune.package import load_package, save_package
from cad.finetune.predict import predict_proba
from cad.finetune.rounds import backbone_from_package
from cad.finetune.train import train
from cad.log import progress
from cad.pipeline.data_stages import split_indices
from cad.pipeline.store import Artifact
from cad.probe.nodes import choose_connection_node
from cad.probe.svm import choose_finetune_node, score_nodes

BACKBONE_SEED = 0


@dataclass(frozen=True)
class Source:
    """Where a chain's backbone comes from: fresh weights, or a round-1 package."""

    backbone: BackboneConfig
    round: int
    previous: Artifact | None = None  # round-1 finetune artifact


def _backbone(source: Source, in_chans: int) -> tuple[torch.nn.Module, str, list[str]]:
    """(backbone, weights description, candidate nodes) for this round."""
    spec = get_spec(source.backbone.name)
    nodes = list(source.backbone.nodes or spec.nodes)
    if source.previous is None:
        with torch.random.fork_rng():
            torch.manual_seed(BACKBONE_SEED)  # random weights must be the same in every stage
            loaded = create_backbone(
                spec.name,
                weights=source.backbone.weights,
                in_chans=in_chans,
                fallback=source.backbone.fallback,
            )
        return loaded.model, loaded.weights_source, nodes
    model, meta, _ = backbone_from_package(source.previous.path / "model")
    cut = nodes.index(meta["nodes"]["connection"])
    return model, f"round {source.round - 1} model ({meta['weights_source']})", nodes[: cut + 1]


def extract_stage(out: Path, source: Source, augment: Artifact, cfg: PipelineConfig) -> dict:
    spec = get_spec(source.backbone.name)
    in_chans = cfg.input.in_chans
    model, weights_source, nodes = _backbone(source, in_chans)
    runtime = select_runtime(cfg.extract.precision, cfg.extract.channels_last)
    images = np.load(augment.file("train_images.npy"), mmap_mode="r")
    with progress(f"extract {spec.name} r{source.round}", len(images), "slices") as advance:
        features = extract_features(
            model,
            nodes,
            images,
            Normalize(spec.mean, spec.std, in_chans),
            runtime,
            cfg.extract.batch_size,
            cfg.extract.pooling,
            advance,
            compile=cfg.extract.compile,
            compile_min_tflop=cfg.extract.compile_min_tflop,
            compile_max_gflop_per_image=cfg.extract.compile_max_gflop_per_image,
        )
    save_features(features, out / "features")
    from cad.backbones import node_shapes

    shapes = node_shapes(model, nodes, cfg.input.size, in_chans)
    depth = dict(zip(spec.nodes, spec.node_depths, strict=True))
    info = [
        {"node": n, "depth": depth.get(n, i), "shape": list(shapes[n])} for i, n in enumerate(nodes)
    ]
    (out / "nodes.json").write_text(
        json.dumps(
            {"nodes": info, "weights_source": weights_source, "runtime": describe(runtime)},
            indent=1,
        )
    )
    return {"items": len(images), "weights_source": weights_source}


def probe_stage(
    out: Path,
    extract: Artifact,
    augment: Artifact,
    split: Artifact,
    cfg: PipelineConfig,
    title: str,
) -> dict:
    info = extract.read_json("nodes.json")
    nodes = [n["node"] for n in info["nodes"]]
    depths = {n["node"]: n["depth"] for n in info["nodes"]}
    shapes = {n["node"]: n["shape"] for n in info["nodes"]}
    samples = read_samples(augment.file("train_samples.csv"))
    folds_by_patient = split.read_json("splits.json")["folds"]
    folds = np.array([folds_by_patient[p] for p in column(samples, "patient")])
    labels = column(samples, "label").astype(np.int64)
    features = load_features(extract.path / "features", nodes)
    scores = score_nodes(features, depths, labels, folds, cfg.probe, cfg.balance)
    best = choose_finetune_node(scores)
    connection = choose_connection_node(nodes, shapes, best.node, cfg.finetune.connection)
    with open(out / "layer_scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(scores[0].as_row()))
        writer.writeheader()
        writer.writerows(s.as_row() for s in scores)
    plot_layer_scores(
        [s.depth for s in scores],
        [s.node for s in scores],
        [s.f1_mean for s in scores],
        [s.f1_std for s in scores],
        best.node,
        out / "layer_f1.png",
        title,
    )
    chosen = {"finetune": best.node, "connection": connection, "finetune_f1": best.f1_mean}
    (out / "nodes.json").write_text(json.dumps(chosen, indent=1))
    return {"items": len(scores) * len(np.unique(folds)), **chosen}


def supervised_aux_nodes(spec, finetune: str, connection: str) -> tuple[str, ...]:
    """Auxiliary-classifier nodes inside the trainable part (after the fine-tuning node, up
    to the connection node): only there can deep supervision change anything."""
    order = list(spec.nodes)
    lo, hi = order.index(finetune), order.index(connection)
    return tuple(n for n in spec.aux_nodes if n in order and lo < order.index(n) <= hi)


def _data_hash(augment: Artifact) -> str:
    return hashlib.sha256(augment.key.encode()).hexdigest()[:16]


def finetune_stage(
    out: Path,
    source: Source,
    probe: Artifact,
    extract: Artifact,
    augment: Artifact,
    ingest: Artifact,
    split: Artifact,
    cfg: PipelineConfig,
    checkpoints: Path,
    title: str,
    denoise: Artifact | None = None,
) -> dict:
    spec = get_spec(source.backbone.name)
    in_chans = cfg.input.in_chans
    chosen = probe.read_json("nodes.json")
    model_in, _, _ = _backbone(source, in_chans)
    weights_source = extract.read_json("nodes.json")["weights_source"]
    torch.manual_seed(cfg.finetune.seed)
    aux_nodes = supervised_aux_nodes(spec, chosen["finetune"], chosen["connection"])
    model = build_transfer_model(
        model_in,
        chosen["finetune"],
        chosen["connection"],
        mean=spec.mean,
        std=spec.std,
        in_chans=in_chans,
        size=cfg.input.size,
        hidden=cfg.finetune.hidden,
        dropout=cfg.finetune.dropout,
        aux_nodes=aux_nodes,
    )
    if source.previous is not None:
        _, meta, head = backbone_from_package(source.previous.path / "model")
        if meta["nodes"]["connection"] == chosen["connection"]:
            model.head.load_state_dict(head)  # same attachment point: continue round 1's head
    images = np.load(augment.file("train_images.npy"), mmap_mode="r")
    labels = column(read_samples(augment.file("train_samples.csv")), "label").astype(np.int64)
    order = np.load(augment.file("order.npy"))
    all_images = np.load(ingest.file("images.npy"), mmap_mode="r")
    all_labels = column(read_samples(ingest.file("samples.csv")), "label").astype(np.int64)
    val_idx = split_indices(ingest, split, "val")
    runtime = select_runtime(cfg.finetune.precision, cfg.extract.channels_last)
    epochs_total = len(order) * cfg.finetune.epochs
    with progress(f"finetune {spec.name} r{source.round}", epochs_total, "slices") as advance:
        result = train(
            model,
            np.asarray(images),
            labels,
            order,
            np.asarray(all_images[val_idx]),
            all_labels[val_idx],
            cfg.finetune,
            cfg.augment,
            runtime,
            checkpoints,
            advance,
        )
    threshold = choose_threshold(all_labels[val_idx], result.val_prob)
    meta = {
        "backbone": spec.name,
        "round": source.round,
        "weights_source": weights_source,
        "nodes": {"finetune": chosen["finetune"], "connection": chosen["connection"]},
        "aux_nodes": list(aux_nodes),
        "head": {"hidden": cfg.finetune.hidden, "dropout": cfg.finetune.dropout},
        "classes": ["non-tumour", "tumour"],
        "in_chans": in_chans,
        "input": json.loads(cfg.input.model_dump_json()),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "threshold": threshold,
        "training_data_hash": _data_hash(augment),
        "connection_shape": list(output_shape(model.body, in_chans, cfg.input.size, "features")),
        "frozen_modules": len(model.frozen_modules),
        "trainable_params": int(sum(p.numel() for p in model.trainable_parameters())),
        "frozen_params": int(sum(p.numel() for p in model.frozen_parameters().values())),
        "best_epoch": result.best_epoch,
        "best_val_f1": result.best_val_f1,
    }
    denoiser = None
    if denoise is not None:
        meta["denoiser"] = denoise.read_json("dncnn.json")
        denoiser = denoise.file("dncnn.safetensors")
    model = model.float().to("cpu").to(memory_format=torch.contiguous_format)
    save_package(model, meta, out / "model", denoiser=denoiser)
    with open(out / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    plot_training_curves(result.history, out / "training_curves.png", title)
    return {
        "items": len(order) * len(result.history),
        "threshold": threshold,
        "best_val_f1": result.best_val_f1,
        "prefix_cache": result.used_prefix_cache,
        "runtime": describe(runtime),
    }


def evaluate_stage(
    out: Path,
    finetune: Artifact,
    ingest: Artifact,
    split: Artifact,
    cfg: PipelineConfig,
    title: str,
) -> dict:
    """The only stage that touches the test patients."""
    loaded = load_package(finetune.path / "model")
    samples = read_samples(ingest.file("samples.csv"))
    test_idx = split_indices(ingest, split, "test")
    images = np.load(ingest.file("images.npy"), mmap_mode="r")
    runtime: Runtime = select_runtime(cfg.finetune.precision, cfg.extract.channels_last)
    test_images = loaded.prepare_images(np.asarray(images[test_idx]))  # e.g. the package's DnCNN
    prob = predict_proba(runtime.prepare(loaded.model), test_images, runtime)
    y = column(samples, "label")[test_idx].astype(int)
    groups = column(samples, "patient")[test_idx]
    threshold = loaded.threshold
    metrics = bootstrap_metrics(
        y, prob, threshold, groups, cfg.evaluate.bootstrap, cfg.evaluate.ci, cfg.evaluate.seed
    )
    (out / "metrics.json").write_text(
        json.dumps({"threshold": threshold, "metrics": metrics}, indent=1)
    )
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["sample", "patient", "study", "series", "slice", "label", "probability", "prediction"]
        )
        for i, p in zip(test_idx, prob, strict=True):
            s = samples[i]
            writer.writerow(
                [
                    s.sample,
                    s.patient,
                    s.study,
                    s.series,
                    s.slice,
                    s.label,
                    f"{p:.6f}",
                    int(p >= threshold),
                ]
            )
    plot_roc(y, prob, out / "roc.png", title)
    plot_pr(y, prob, out / "pr.png", title)
    plot_confusion(y, (prob >= threshold).astype(int), out / "confusion.png", title)
    return {"items": len(test_idx), "test_f1": metrics["f1"]["value"]}
