"""``model_card.md``: what a model is, what it was trained on and how well it did.

Written into the package by ``finetune`` (validation figures; test: not yet evaluated) and
rewritten by ``evaluate`` into the package it publishes (with the held-out test metrics),
which is the package summary.json names and MLflow logs and registers. Counts only: no
patient keys, paths or identifiers.
"""

from __future__ import annotations

import datetime as dt
import math

from cad import __version__
from cad.artifacts.evaluation import EvaluationMetrics, LevelResult
from cad.artifacts.model_package import CARD, ModelMeta
from cad.artifacts.splits import SplitSize

__all__ = ["CARD", "INTENDED_USE", "render_card"]

INTENDED_USE = (
    "Research use only. A computer-aided-detection aid that flags breast DCE-MRI studies with "
    "a slice whose calibrated probability of cancer reaches the threshold, for a radiologist "
    "who reads the whole study. Not a medical device; not for diagnostic use."
)
METRIC_NAMES = {
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "accuracy": "Accuracy",
}


def _limitations(meta: ModelMeta) -> list[str]:
    notes = [
        "Not a medical device and not validated clinically; research use only.",
        "Trained and evaluated on the data summarised above (on a fresh install: cad's "
        "generated breast DCE-MRI phantom, not real patients); figures on real scanners, "
        "protocols and populations will differ.",
        "Slice-level classifier: a study is flagged if any slice reaches the threshold; it "
        "does not localise lesions beyond the Grad-CAM heat map, which is a relative map of "
        "what drove the score, not a segmentation.",
        "Intervals are 95% patient-bootstrap percentiles on a small test split; they describe "
        "sampling uncertainty of the metrics, not of one study's probability.",
    ]
    if meta.fell_back_to_random or meta.weights_source.startswith("random"):
        notes.append("The backbone started from random weights (no pretrained source).")
    if meta.pretrained_offline:
        notes.append(
            "The backbone's pretrained source is cad's own offline pretraining, not ImageNet."
        )
    return notes


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def _level_table(title: str, level: LevelResult, threshold: float) -> list[str]:
    lines = [
        f"#### {title}: {level.samples} samples, {level.positives} positive "
        f"(prevalence {level.chance.prevalence:.3f})",
        "",
        "| Metric | Value | 95% CI | Chance level |",
        "|---|---|---|---|",
    ]
    chance = {"f1": level.chance.f1_all_positive, "roc_auc": level.chance.roc_auc}
    for name, label in METRIC_NAMES.items():
        if name not in level.metrics:
            continue
        m = level.metrics[name]
        at = f" at threshold {threshold:.3f}" if name in ("sensitivity", "specificity") else ""
        lines.append(
            f"| {label}{at} | {_fmt(m.value)} | {_fmt(m.low)} - {_fmt(m.high)} | "
            f"{_fmt(chance[name]) if name in chance else ''} |"
        )
    for name, value in level.operating.items():
        lines.append(f"| {name.replace('_', ' ')} | {_fmt(value)} | | |")
    return [*lines, ""]


def render_card(
    meta: ModelMeta,
    splits: dict[str, SplitSize],
    test: EvaluationMetrics | None = None,
    date: dt.date | None = None,
) -> str:
    """The card's markdown (``test``: the evaluate stage's metrics, None before it ran)."""
    date = date or dt.datetime.now(dt.UTC).date()
    calibration = "none (raw probabilities)"
    if meta.calibration is not None:
        calibration = f"{meta.calibration.method}, fitted on the validation patients"
    lines = [
        f"# Model card: cad {meta.backbone} round {meta.round}",
        "",
        f"- Backbone: {meta.backbone}; fine-tuning round {meta.round}",
        f"- Fine-tuning node: `{meta.nodes.finetune}`; connection node: "
        f"`{meta.nodes.connection}` (frozen up to the fine-tuning node: "
        f"{'yes' if meta.frozen else 'no'})",
        f"- Weights source: {meta.weights_source}",
        f"- Input: {meta.in_chans} channels ({meta.input.channels}), {meta.input.size} px",
        f"- Decision threshold: {meta.threshold:.4f} (chosen on validation, calibrated scale)",
        f"- Calibration: {calibration}",
        f"- cad version: {__version__}; card written {date.isoformat()}",
        f"- Training data hash: {meta.training_data_hash}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Training data (pseudonymous counts)",
        "",
        "| Split | Patients | Slices | Positive slices | Prevalence |",
        "|---|---|---|---|---|",
    ]
    for name in ("train", "val", "test"):
        if name in splits:
            s = splits[name]
            prevalence = s.positives / s.samples if s.samples else float("nan")
            lines.append(
                f"| {name} | {s.patients} | {s.samples} | {s.positives} | {_fmt(prevalence)} |"
            )
    lines += [
        "",
        "## Validation",
        "",
        f"Best validation F1 {meta.best_val_f1:.3f} at epoch {meta.best_epoch} (early stopping).",
        "",
        "## Test (held-out patients, touched once by evaluate)",
        "",
    ]
    if test is None:
        lines += [
            "Not yet evaluated: the evaluate stage writes this card with the test metrics.",
            "",
        ]
    else:
        lines += [f"Calibration of the evaluated probabilities: {test.calibration}.", ""]
        lines += _level_table("Slices", test.slice, test.threshold)
        lines += _level_table("Patients (positive if any slice is)", test.patient, test.threshold)
        lines += [f"- Flag: {flag}" for flag in test.flags]
    lines += ["## Limitations", "", *[f"- {note}" for note in _limitations(meta)], ""]
    return "\n".join(lines)
