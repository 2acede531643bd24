"""End of a run: summary.json (machine-readable), report.md (for people), MLflow logging."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cad import __version__
from cad.evaluate.metrics import METRICS
from cad.evaluate.plots import plot_layer_comparison

if TYPE_CHECKING:
    from cad.api import ChainResult, RunResult

log = logging.getLogger("cad")


def _layer_scores(chain: ChainResult) -> list[dict[str, Any]]:
    with open(chain.probe.file("layer_scores.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "node": r["node"],
            "depth": int(r["depth"]),
            "dim": int(r["dim"]),
            "f1_mean": float(r["f1_mean"]),
            "f1_std": float(r["f1_std"]),
        }
        for r in rows
    ]


def chain_summary(chain: ChainResult, workdir: Path) -> dict[str, Any]:
    model_meta = json.loads(chain.finetune.file("model/model.json").read_text())
    metrics = chain.evaluate.read_json("metrics.json")
    return {
        "backbone": chain.backbone,
        "round": chain.round,
        "weights_source": model_meta["weights_source"],
        "fell_back_to_random": "fallback" in model_meta["weights_source"],
        "layer_scores": _layer_scores(chain),
        "nodes": model_meta["nodes"],
        "trainable_params": model_meta["trainable_params"],
        "frozen_params": model_meta["frozen_params"],
        "best_epoch": model_meta["best_epoch"],
        "val_f1": model_meta["best_val_f1"],
        "threshold": model_meta["threshold"],
        "test": metrics["metrics"],
        "model_dir": str(chain.finetune.path.relative_to(workdir) / "model"),
        "artifacts": {
            "extract": chain.extract.key,
            "probe": chain.probe.key,
            "finetune": chain.finetune.key,
            "evaluate": chain.evaluate.key,
        },
    }


def build_summary(result: RunResult, started: float) -> dict[str, Any]:
    data = result.data
    splits = data.split.read_json("splits.json")["sizes"]
    chains = [chain_summary(c, result.workdir) for c in result.chains]
    best = max(chains, key=lambda c: (c["val_f1"], -c["round"])) if chains else None
    return {
        "pipeline": result.config.name,
        "cad_version": __version__,
        "data": {
            "manifest_hash": data.manifest_hash,
            "splits": splits,
            "ingest": {
                k: v
                for k, v in data.ingest.manifest.items()
                if k in ("items", "studies", "studies_skipped", "outcomes", "positives")
            },
            "denoise": data.denoise.read_json("denoise_metrics.json") if data.denoise else None,
        },
        "results": chains,
        "best": {
            "backbone": best["backbone"],
            "round": best["round"],
            "chosen_by": "validation F1",
            "model_dir": best["model_dir"],
        }
        if best
        else None,
        "stages": [r.as_dict() for r in result.runner.records],
        "wall_s": round(time.time() - started, 2),
    }


def _fmt(metric: dict[str, float]) -> str:
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def write_report(summary: dict[str, Any], path: Path) -> None:
    lines = [f"# cad report: {summary['pipeline']}", ""]
    fallbacks = [c for c in summary["results"] if c["fell_back_to_random"]]
    if fallbacks:
        names = ", ".join(sorted({c["backbone"] for c in fallbacks}))
        lines += [
            f"> **WARNING: random weights** were used for {names} because ImageNet weights "
            "were not found (fallback: random). Results do not reflect transfer learning.",
            "",
        ]
    tracking = summary.get("tracking", {})
    if tracking and not tracking.get("ok", True):
        lines += [
            f"> **MLflow logging failed** ({tracking.get('uri')}): "
            f"{'; '.join(tracking.get('failures', [])[:3])}. All artifacts are on disk.",
            "",
        ]
    sizes = summary["data"]["splits"]
    lines += ["## Data", "", "| split | patients | slices | positive slices |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {s['patients']} | {s['samples']} | {s['positives']} |" for n, s in sizes.items()
    ]
    denoise = summary["data"].get("denoise")
    if denoise:
        lines += [
            "",
            f"DnCNN denoising (trained on training slices, sigma {denoise['sigma']}): "
            f"validation PSNR {denoise['val_psnr_noisy_db']:.2f} dB noisy -> "
            f"{denoise['val_psnr_denoised_db']:.2f} dB denoised; mean absolute change on "
            f"the real slices {denoise['mean_abs_change_real']:.4f}.",
        ]
    lines += [
        "",
        "## Test metrics (95% patient-bootstrap intervals)",
        "",
        "| backbone | round | weights | fine-tuning node | connection node | "
        + " | ".join(METRICS)
        + " |",
        "|" + "---|" * (5 + len(METRICS)),
    ]
    for c in summary["results"]:
        lines.append(
            f"| {c['backbone']} | {c['round']} | {c['weights_source']} | "
            f"{c['nodes']['finetune']} | "
            f"{c['nodes']['connection']} | "
            + " | ".join(_fmt(c["test"][m]) for m in METRICS)
            + " |"
        )
    if summary.get("best"):
        b = summary["best"]
        lines += [
            "",
            f"Best by validation F1: **{b['backbone']} round {b['round']}** "
            f"(model package: `{b['model_dir']}`).",
        ]
    lines += ["", "## Layer probe (SVM F1 by patient-grouped CV on the training split)", ""]
    for c in summary["results"]:
        scores = ", ".join(f"{s['node']} {s['f1_mean']:.3f}" for s in c["layer_scores"])
        lines.append(f"- {c['backbone']} round {c['round']}: {scores}")
    lines += [
        "",
        "![layer F1](layer_f1_comparison.png)",
        "",
        "## Stages",
        "",
        "| stage | this run | wall s (when built) | items | items/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['label']} | {'reused' if s['reused'] else 'ran'} | {s['built_wall_s']:.1f} | "
        f"{s['items']} | {s['items'] / s['built_wall_s'] if s['built_wall_s'] else 0:.1f} |"
        for s in summary["stages"]
    ]
    if tracking:
        lines += [
            "",
            f"MLflow: `{tracking.get('uri')}`, experiment `{tracking.get('experiment')}`, "
            f"parent run `{tracking.get('parent_run_id')}`. Open the UI with "
            "`mlflow ui --backend-store-uri <uri>`.",
        ]
    path.write_text("\n".join(lines) + "\n")


def finish_run(result: RunResult, started: float, track: bool = True) -> dict[str, Any]:
    from cad.pipeline.tracking_run import log_run

    workdir = result.workdir
    summary = build_summary(result, started)
    curves = {
        f"{c['backbone']} r{c['round']}": (
            [i / max(len(c["layer_scores"]) - 1, 1) for i in range(len(c["layer_scores"]))],
            [s["f1_mean"] for s in c["layer_scores"]],
        )
        for c in summary["results"]
    }
    plot_layer_comparison(curves, workdir / "layer_f1_comparison.png")
    summary["tracking"] = (
        log_run(result, summary) if track and result.config.tracking.enabled else {}
    )
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, workdir / "report.md")
    return summary
