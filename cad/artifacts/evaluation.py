"""The held-out evaluation: metrics with intervals, per-slice predictions and plots."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cad.artifacts.base import Artifact, read_model, write_model
from cad.data.samples import Sample


class Interval(BaseModel):
    """A point estimate with its patient-bootstrap percentile interval (NaN: undefined, e.g.
    PPV without positive predictions; written as JSON's NaN like ``json.dumps`` does)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    value: float
    low: float
    high: float


class ChanceLevels(BaseModel):
    """What an uninformed rule scores on the same labels (``cad.evaluate.metrics``)."""

    prevalence: float
    f1_all_positive: float
    f1_prevalence: float
    roc_auc: float = 0.5


class LevelResult(BaseModel):
    """Metrics at one level (slices, or patients: positive if any slice is)."""

    samples: int
    positives: int
    chance: ChanceLevels
    metrics: dict[str, Interval]  # every name of cad.evaluate.metrics.METRICS
    # ece, brier, sensitivity_at_specificity_0.90, specificity_at_sensitivity_0.90
    operating: dict[str, float] = {}


class EvaluationMetrics(BaseModel):
    threshold: float  # chosen on validation; a slice is positive at probability >= threshold
    slice: LevelResult
    patient: LevelResult
    flags: list[str] = []  # what a reader must not miss, e.g. sensitivity below 0.5
    calibration: str = "none"  # how the probabilities were calibrated (on validation)

    @property
    def metrics(self) -> dict[str, Interval]:
        """Slice-level metrics (what the layer probe and fine-tuning optimise)."""
        return self.slice.metrics


PREDICTION_COLUMNS = ("sample", "patient", "study", "series", "slice", "label", "probability",
                      "prediction")  # fmt: skip


class Evaluation(Artifact):
    kind = "evaluation"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    ROC = "roc.png"
    PR = "pr.png"
    CONFUSION = "confusion.png"
    RELIABILITY = "reliability.png"
    DECISION = "decision_curve.png"
    PACKAGE = "model"  # the evaluated model package, its card holding the test metrics

    @property
    def package(self) -> Path | None:
        """The published package (None for an evaluation written before cad published one)."""
        path = self.path / self.PACKAGE
        return path if path.is_dir() else None

    @classmethod
    def package_in(cls, out: Path) -> Path:
        return out / cls.PACKAGE

    def metrics(self) -> EvaluationMetrics:
        return read_model(EvaluationMetrics, self.path / self.METRICS)

    def plots(self) -> list[Path]:
        names = (self.ROC, self.PR, self.CONFUSION, self.RELIABILITY, self.DECISION)
        return [self.path / name for name in names if (self.path / name).is_file()]

    def predictions(self) -> list[dict[str, str]]:
        with open(self.path / self.PREDICTIONS, newline="") as handle:
            return list(csv.DictReader(handle))

    @classmethod
    def plot_paths(cls, out: Path) -> tuple[Path, Path, Path]:
        return out / cls.ROC, out / cls.PR, out / cls.CONFUSION

    @classmethod
    def calibration_plot_paths(cls, out: Path) -> tuple[Path, Path]:
        return out / cls.RELIABILITY, out / cls.DECISION

    @classmethod
    def write(
        cls,
        out: Path,
        metrics: EvaluationMetrics,
        samples: Iterable[Sample],
        probabilities: Iterable[float],
    ) -> None:
        write_model(metrics, out / cls.METRICS)
        with open(out / cls.PREDICTIONS, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PREDICTION_COLUMNS)
            for s, p in zip(samples, probabilities, strict=True):
                row = [s.sample, s.patient, s.study, s.series, s.slice, s.label]
                writer.writerow([*row, f"{p:.6f}", int(p >= metrics.threshold)])
