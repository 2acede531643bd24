"""``report.md``: the run summary written for people."""

from __future__ import annotations

from pathlib import Path

from cad.artifacts.evaluation import Interval
from cad.artifacts.summary import RunDir, RunSummary
from cad.evaluate.metrics import METRICS


def _fmt(metric: Interval) -> str:
    return f"{metric.value:.3f} [{metric.low:.3f}, {metric.high:.3f}]"


def _warnings(summary: RunSummary) -> list[str]:
    lines: list[str] = []
    fallbacks = sorted({c.backbone for c in summary.results if c.fell_back_to_random})
    if fallbacks:
        lines += [
            f"> **WARNING: random weights** were used for {', '.join(fallbacks)} because "
            "ImageNet weights were not found (fallback: random). Results do not reflect "
            "transfer learning.",
            "",
        ]
    offline = [c for c in summary.results if "pretrain:" in c.weights_source and c.round == 1]
    if offline:
        lines += [
            "> **Weights:** "
            + "; ".join(f"{c.backbone}: {c.weights_source}" for c in offline)
            + ". These come from cad's offline source, not from ImageNet: shapes-N is "
            "procedural shape classes (no patient data), contrastive-N self-supervised "
            "learning on the training patients' slices (pixels only: no label, no validation "
            "or test patient)."
            + (
                " **NOT LEARNED** marks a backbone whose pretraining did not learn the source "
                "task (accuracy below twice chance): its weights are close to random."
                if any("NOT LEARNED" in c.weights_source for c in offline)
                else ""
            ),
            "",
        ]
    tracking = summary.tracking
    if tracking is not None and not tracking.ok:
        lines += [
            f"> **MLflow logging failed** ({tracking.uri}): "
            f"{'; '.join(tracking.failures[:3])}. All artifacts are on disk.",
            "",
        ]
    return lines


def _data(summary: RunSummary) -> list[str]:
    lines = ["## Data", "", "| split | patients | slices | positive slices |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {s.patients} | {s.samples} | {s.positives} |"
        for name, s in summary.data.splits.items()
    ]
    denoise = summary.data.denoise
    if denoise:
        lines += [
            "",
            f"DnCNN denoising (trained on training slices): validation PSNR "
            f"{denoise['val_psnr_noisy_db']:.2f} dB noisy -> "
            f"{denoise['val_psnr_denoised_db']:.2f} dB denoised; mean absolute change on "
            f"the real slices {denoise['mean_abs_change_real']:.4f}.",
        ]
    return lines


def _metric_table(summary: RunSummary, patient: bool) -> list[str]:
    head = "| backbone | round | weights | fine-tuning node | connection node | threshold | "
    lines = [head + " | ".join(METRICS) + " |", "|" + "---|" * (6 + len(METRICS))]
    for c in summary.results:
        metrics = c.test_patient if patient else c.test
        chance = c.test_patient_chance if patient else c.test_chance
        cells = [_fmt(metrics[m]) for m in METRICS]
        cells[0] += f" (chance {chance.f1_all_positive:.2f} / {chance.f1_prevalence:.2f})"
        lines.append(
            f"| {c.backbone} | {c.round} | {c.weights_source} | {c.nodes.finetune} | "
            f"{c.nodes.connection} | {c.threshold:.3f} | " + " | ".join(cells) + " |"
        )
    return lines


def _operating_table(summary: RunSummary) -> list[str]:
    names = (
        "ece",
        "ece_uncalibrated",
        "brier",
        "brier_uncalibrated",
        "sensitivity_at_specificity_0.90",
        "specificity_at_sensitivity_0.90",
    )
    lines = [
        "**Calibration and operating points** (probabilities calibrated on the validation "
        'patients; ECE: 10 equal bins; "uncal.": the same test probabilities before '
        "calibration; sensitivity at 0.90 specificity and specificity at 0.90 sensitivity "
        "from the test ROC curve; plots: `reliability.png`, `decision_curve.png` in each "
        "evaluate artifact)",
        "",
        "| backbone | round | calibration | level | ECE | ECE uncal. | Brier | Brier uncal. | "
        "sens @ spec 0.90 | spec @ sens 0.90 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary.results:
        for level, values in (("slice", c.test_operating), ("patient", c.test_patient_operating)):
            if values:
                cells = " | ".join(f"{values[n]:.3f}" if n in values else "-" for n in names)
                lines.append(f"| {c.backbone} | {c.round} | {c.calibration} | {level} | {cells} |")
    return lines


def _results(summary: RunSummary) -> list[str]:
    lines = [
        "",
        "## Test metrics (95% patient-bootstrap intervals)",
        "",
        "Chance levels of F1 on the same test labels are given as (all positive / random at "
        "the prevalence): F1 of calling everything positive, 2p/(1+p), and of guessing "
        "positive with probability p; ROC AUC's chance level is 0.5. The threshold was "
        "chosen on the validation patients (F1-optimal) and is the operating point of every "
        "threshold metric.",
        "",
        "**Slices**",
        "",
        *_metric_table(summary, patient=False),
        "",
        "**Patients** (a patient is positive if any of its slices is; its score is its "
        "highest slice probability)",
        "",
        *_metric_table(summary, patient=True),
    ]
    lines += ["", *_operating_table(summary)]
    flagged = [(c, flag) for c in summary.results for flag in c.flags]
    if flagged:
        lines += [""] + [f"> **Check:** {c.title}: {flag}." for c, flag in flagged]
    if summary.best is not None:
        b = summary.best
        lines += [
            "",
            f"Best by validation F1: **{b.backbone} round {b.round}** "
            f"(model package: `{b.model_dir}`).",
        ]
    lines += [
        "",
        "## Layer probe (SVM F1 by patient-grouped CV on the training split)",
        "",
        "| backbone | round | fine-tuning node | its F1 | chance (all positive / random) | "
        "margin over all-positive |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary.results:
        p = c.probe
        lines.append(
            f"| {c.backbone} | {c.round} | {p.finetune} | {p.finetune_f1:.3f} | "
            f"{p.chance_f1_all_positive:.3f} / {p.chance_f1_prevalence:.3f} | "
            f"{p.finetune_f1 - p.chance_f1_all_positive:+.3f} |"
        )
    lines.append("")
    for c in summary.results:
        scores = ", ".join(f"{s.node} {s.f1_mean:.3f}" for s in c.layer_scores)
        lines.append(f"- {c.backbone} round {c.round}: {scores}")
    return lines


def _stages(summary: RunSummary) -> list[str]:
    lines = [
        "",
        f"![layer F1]({RunDir.COMPARISON})",
        "",
        "## Stages",
        "",
        "| stage | this run | wall s (when built) | items | items/s |",
        "|---|---|---|---|---|",
    ]
    for s in summary.stages:
        rate = s.items / s.built_wall_s if s.built_wall_s else 0
        lines.append(
            f"| {s.label} | {'reused' if s.reused else 'ran'} | {s.built_wall_s:.1f} | "
            f"{s.items} | {rate:.1f} |"
        )
    tracking = summary.tracking
    if tracking is not None:
        lines += [
            "",
            f"MLflow: `{tracking.uri}`, experiment `{tracking.experiment}`, parent run "
            f"`{tracking.parent_run_id}`. Open the UI with "
            "`mlflow ui --backend-store-uri <uri>`.",
        ]
    return lines


def write_report(summary: RunSummary, path: Path) -> None:
    lines = [f"# cad report: {summary.pipeline}", ""]
    lines += _warnings(summary) + _data(summary) + _results(summary) + _stages(summary)
    path.write_text("\n".join(lines) + "\n")
