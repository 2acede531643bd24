"""The end of a run: ``summary.json`` (for machines), the comparison plot, MLflow, ``report.md``."""

from __future__ import annotations

import logging
import time

from cad import __version__
from cad.artifacts.summary import (
    BestModel,
    ChainSummary,
    DataSummary,
    RunDir,
    RunSummary,
)
from cad.pipeline.result import ChainArtifacts, DataArtifacts, RunResult

log = logging.getLogger("cad")

INGEST_FIELDS = ("items", "studies", "studies_skipped", "outcomes", "positives")


def chain_summary(chain: ChainArtifacts, workdir: RunDir) -> ChainSummary:
    meta = chain.finetune.model_meta()
    metrics = chain.evaluate.metrics()
    model_dir = chain.evaluate.package or chain.finetune.package  # evaluated: full model card
    return ChainSummary(
        backbone=chain.backbone,
        round=chain.round,
        weights_source=meta.weights_source,
        fell_back_to_random=meta.fell_back_to_random,
        layer_scores=chain.probe.scores(),
        probe=chain.probe.choice(),
        nodes=meta.nodes,
        trainable_params=meta.trainable_params,
        frozen_params=meta.frozen_params,
        best_epoch=meta.best_epoch,
        val_f1=meta.best_val_f1,
        threshold=meta.threshold,
        test=metrics.slice.metrics,
        test_chance=metrics.slice.chance,
        test_patient=metrics.patient.metrics,
        test_patient_chance=metrics.patient.chance,
        flags=metrics.flags,
        calibration=metrics.calibration,
        test_operating=metrics.slice.operating,
        test_patient_operating=metrics.patient.operating,
        model_dir=str(model_dir.relative_to(workdir.root)),
        model_dir_abs=str(model_dir.resolve()),
        artifacts={
            "extract": chain.extract.key,
            "probe": chain.probe.key,
            "finetune": chain.finetune.key,
            "evaluate": chain.evaluate.key,
        },
    )


def data_summary(data: DataArtifacts) -> DataSummary:
    denoise = data.denoise
    return DataSummary(
        manifest_hash=data.manifest_hash,
        splits=data.split.assignment().sizes,
        ingest={k: v for k, v in data.ingest.meta.items() if k in INGEST_FIELDS},
        denoise=denoise.metrics if denoise is not None else None,
    )


def _machine() -> dict[str, object]:
    """What the figures of this run were measured on (``cad doctor`` prints the same)."""
    import torch

    from cad.cpu import cpu_info
    from cad.device import resolved_precision

    return {
        "cpu": cpu_info().as_dict(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "precision_auto": resolved_precision("auto"),
        "torch": torch.__version__,
    }


def build_summary(result: RunResult, started: float) -> RunSummary:
    chains = [chain_summary(c, result.workdir) for c in result.chains]
    best = max(chains, key=lambda c: (c.val_f1, -c.round)) if chains else None
    return RunSummary(
        pipeline=result.config.name,
        cad_version=__version__,
        data=data_summary(result.data),
        results=chains,
        best=BestModel(
            backbone=best.backbone,
            round=best.round,
            model_dir=best.model_dir,
            model_dir_abs=best.model_dir_abs,
        )
        if best
        else None,
        stages=list(result.records),
        wall_s=round(time.time() - started, 2),
        machine=_machine(),
    )


def relative_depths(chain: ChainSummary) -> list[int]:
    """Each scored node's depth as a percentage of its backbone's deepest candidate (0-100),
    so that layer curves of different backbones line up (plots and MLflow steps)."""
    from cad.backbones import get_spec

    deepest = max(get_spec(chain.backbone).node_depths)
    return [round(100 * s.depth / deepest) for s in chain.layer_scores]


def _interval(row: ChainSummary, metric: str, patient: bool = False) -> str:
    m = (row.test_patient if patient else row.test)[metric]
    return f"{m.value:.3f} [{m.low:.3f}, {m.high:.3f}]"


def comparison_rows(summary: RunSummary) -> list[dict[str, str]]:
    """One row per backbone and round: the at-a-glance table (markdown, CSV, MLflow)."""
    return [
        {
            "backbone": c.backbone,
            "round": str(c.round),
            "weights": c.weights_source,
            "fine-tuning node": c.nodes.finetune,
            "probe F1": f"{c.probe.finetune_f1:.3f}",
            "probe chance F1": f"{c.probe.chance_f1_all_positive:.3f}",
            "connection node": c.nodes.connection,
            "val F1": f"{c.val_f1:.3f}",
            "test F1": _interval(c, "f1"),
            "test chance F1": f"{c.test_chance.f1_all_positive:.3f}",
            "test ROC AUC": _interval(c, "roc_auc"),
            "patient ROC AUC": _interval(c, "roc_auc", patient=True),
        }
        for c in summary.results
    ]


def write_comparison(summary: RunSummary, workdir: RunDir) -> None:
    import csv

    rows = comparison_rows(summary)
    if not rows:
        return
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[k] for k in head) + " |" for r in rows]
    workdir.file(RunDir.COMPARISON_TABLE).write_text("\n".join(lines) + "\n")
    with open(workdir.file(RunDir.COMPARISON_CSV), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=head)
        writer.writeheader()
        writer.writerows(rows)


def _plot_test_comparison(result: RunResult, summary: RunSummary, workdir: RunDir) -> None:
    """The parent's at-a-glance test plots: metrics with intervals, and all ROC curves."""
    from cad.evaluate.plots import plot_metric_comparison, plot_roc_comparison

    labels = [f"{c.backbone} r{c.round}" for c in summary.results]
    rows = {
        label: {m: (c.test[m].value, c.test[m].low, c.test[m].high) for m in ("f1", "roc_auc")}
        for label, c in zip(labels, summary.results, strict=True)
    }
    chance_f1 = max((c.test_chance.f1_all_positive for c in summary.results), default=0.0)
    plot_metric_comparison(
        rows,
        {"f1": chance_f1, "roc_auc": 0.5},
        workdir.file(RunDir.COMPARISON_METRICS),
        "Test F1 and ROC AUC (slice level)",
    )
    curves = {}
    for label, chain in zip(labels, result.chains, strict=True):
        slices = chain.evaluate.predictions()
        curves[label] = (
            [int(s["label"]) for s in slices],
            [float(s["probability"]) for s in slices],
        )
    plot_roc_comparison(curves, workdir.file(RunDir.COMPARISON_ROC), "Test ROC (slice level)")


def finish_run(result: RunResult, started: float, track: bool = True) -> RunSummary:
    """Write the summary, the comparison plot, MLflow (unless off) and the report."""
    from cad.evaluate.plots import plot_layer_comparison
    from cad.pipeline.report import write_report

    workdir = result.workdir
    summary = build_summary(result, started)
    curves = {
        f"{c.backbone} r{c.round}": (
            [d / 100 for d in relative_depths(c)],
            [s.f1_mean for s in c.layer_scores],
        )
        for c in summary.results
    }
    chance = max((c.probe.chance_f1_all_positive for c in summary.results), default=None)
    plot_layer_comparison(curves, workdir.file(RunDir.COMPARISON), chance=chance)
    _plot_test_comparison(result, summary, workdir)
    write_comparison(summary, workdir)
    if track and result.config.tracking.enabled:
        from cad.pipeline.mlflow_log import log_run

        summary.tracking = log_run(result, summary)
    workdir.write_summary(summary)
    write_report(summary, workdir.file(RunDir.REPORT))
    return summary
