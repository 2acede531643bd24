"""Evaluate: the only stage that touches the test patients."""

from __future__ import annotations

from typing import Any

import numpy as np

from cad.artifacts.evaluation import (
    ChanceLevels,
    Evaluation,
    EvaluationMetrics,
    Interval,
    LevelResult,
)
from cad.artifacts.images import ImageSet
from cad.artifacts.model_package import TrainedModel
from cad.artifacts.splits import Splits
from cad.config import EvaluateConfig
from cad.data.samples import column
from cad.pipeline.stage import Settings, Stage, StageContext


class EvaluateSettings(Settings):
    evaluate: EvaluateConfig
    title: str


class EvaluateStage(Stage[EvaluateSettings]):
    name = "evaluate"
    summary = (
        "the only stage that touches the test patients: F1, ROC AUC, accuracy, sensitivity, "
        "specificity, PPV, NPV with 95% patient-bootstrap intervals; calibrated probabilities "
        "(ECE, Brier, reliability), sensitivity at 0.90 specificity and back, decision curve; "
        "ROC (bootstrap band)/PR/confusion plots; pseudonymous predictions; the published "
        "model package with its model card"
    )
    settings_type = EvaluateSettings
    inputs = {"model": TrainedModel, "images": ImageSet, "splits": Splits}
    output = Evaluation

    def identity(self, settings: EvaluateSettings) -> dict[str, Any]:
        from cad.device import resolved_precision

        precision = resolved_precision(settings.evaluate.precision)
        return {**settings.identity(), "precision": precision}

    def run(
        self,
        ctx: StageContext,
        settings: EvaluateSettings,
        model: TrainedModel,
        images: ImageSet,
        splits: Splits,
    ) -> dict[str, Any]:
        from cad.artifacts.model_card import render_card
        from cad.device import select_runtime
        from cad.evaluate.calibration import net_benefit
        from cad.evaluate.metrics import patient_level
        from cad.evaluate.plots import (
            plot_confusion,
            plot_decision_curve,
            plot_pr,
            plot_reliability,
            plot_roc,
        )
        from cad.finetune.package import load_package, publish_package
        from cad.finetune.predict import predict_proba

        cfg = settings.evaluate
        loaded = load_package(model.package)
        test_images, samples = images.subset(splits.assignment().test)
        runtime = select_runtime(cfg.precision, cfg.runtime.channels_last)
        prepared = loaded.prepare_images(test_images)  # e.g. the package's DnCNN
        raw = predict_proba(loaded.model, prepared, runtime, cfg.runtime.batch_size)
        prob = loaded.calibrate(raw)
        y = column(samples, "label").astype(int)
        groups = column(samples, "patient")
        threshold = loaded.threshold
        calibration = loaded.meta.calibration
        # with a calibration, the same figures of the uncalibrated probabilities beside them
        # show on the test patients whether the validation fit helped
        uncalibrated = None if calibration is None else raw
        slices = _level(y, prob, threshold, groups, cfg, uncalibrated)
        patient_y, patient_p, patients = patient_level(y, prob, groups)
        patient_raw = None if uncalibrated is None else patient_level(y, raw, groups)[1]
        patient = _level(patient_y, patient_p, threshold, patients, cfg, patient_raw)
        result = EvaluationMetrics(
            threshold=threshold,
            slice=slices,
            patient=patient,
            flags=_flags(slices, patient),
            calibration="none" if calibration is None else calibration.method,
        )
        Evaluation.write(ctx.out, result, samples, prob)
        # The package a user scores with and MLflow registers: the evaluated one, whose
        # model card holds these test metrics.
        card = render_card(loaded.meta, splits.assignment().sizes, result)
        publish_package(model.package, Evaluation.package_in(ctx.out), card)
        roc, pr, confusion = Evaluation.plot_paths(ctx.out)
        plot_roc(y, prob, roc, settings.title, groups)
        reliability, decision = Evaluation.calibration_plot_paths(ctx.out)
        plot_reliability(y, prob, reliability, f"{settings.title}: reliability")
        grid = [round(0.05 * k, 2) for k in range(1, 11)]  # threshold probabilities
        prevalence = float(np.mean(y)) if len(y) else 0.0
        treat_all = [prevalence - (1 - prevalence) * t / (1 - t) for t in grid]
        benefit = [float(v) for v in net_benefit(y, prob, grid)]
        plot_decision_curve(grid, benefit, treat_all, decision, f"{settings.title}: decisions")
        plot_pr(y, prob, pr, settings.title)
        plot_confusion(y, (prob >= threshold).astype(int), confusion, settings.title)
        return {"items": len(samples), "test_f1": slices.metrics["f1"].value}


def _level(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    groups: np.ndarray,
    cfg: EvaluateConfig,
    uncalibrated: np.ndarray | None = None,
) -> LevelResult:
    """Metrics with patient-bootstrap intervals (one group per patient) and chance levels;
    ``uncalibrated``: the probabilities before calibration, for its ECE and Brier score."""
    from cad.evaluate.calibration import (
        brier,
        expected_calibration_error,
        sensitivity_at_specificity,
        specificity_at_sensitivity,
    )
    from cad.evaluate.metrics import bootstrap_metrics, chance_levels

    metrics = bootstrap_metrics(y, prob, threshold, groups, cfg.bootstrap, cfg.ci, cfg.seed)
    operating = {
        "ece": expected_calibration_error(y, prob),
        "brier": brier(y, prob),
        "sensitivity_at_specificity_0.90": sensitivity_at_specificity(y, prob, 0.90),
        "specificity_at_sensitivity_0.90": specificity_at_sensitivity(y, prob, 0.90),
    }
    if uncalibrated is not None:
        operating["ece_uncalibrated"] = expected_calibration_error(y, uncalibrated)
        operating["brier_uncalibrated"] = brier(y, uncalibrated)
    return LevelResult(
        samples=len(y),
        positives=int(np.sum(y)),
        chance=ChanceLevels(**chance_levels(y)),
        metrics={k: Interval(**v) for k, v in metrics.items()},
        operating={k: round(float(v), 6) for k, v in operating.items()},
    )


def _flags(slices: LevelResult, patients: LevelResult) -> list[str]:
    """Operating points a reader must not miss: below 0.5 the model misses most lesions
    (sensitivity) or calls most healthy tissue a lesion (specificity)."""
    out = []
    for level, result in (("slice", slices), ("patient", patients)):
        for name in ("sensitivity", "specificity"):
            value = result.metrics[name].value
            if np.isfinite(value) and value < 0.5:
                out.append(f"{level} {name} {value:.2f} is below 0.5")
    return out
