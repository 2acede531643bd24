"""The held-out evaluation: metrics with intervals, per-slice predictions and plots."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from cad.artifacts.base import Artifact, read_model, write_model
from cad.data.samples import Sample


class Interval(BaseModel):
    """A point estimate with its patient-bootstrap percentile interval (NaN: undefined)."""

    value: float
    low: float
    high: float


class EvaluationMetrics(BaseModel):
    threshold: float
    metrics: dict[str, Interval]  # slice level, every name of cad.evaluate.metrics.METRICS


PREDICTION_COLUMNS = ("sample", "patient", "study", "series", "slice", "label", "probability",
                      "prediction")  # fmt: skip


class Evaluation(Artifact):
    kind = "evaluation"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    ROC = "roc.png"
    PR = "pr.png"
    CONFUSION = "confusion.png"

    def metrics(self) -> EvaluationMetrics:
        return read_model(EvaluationMetrics, self.path / self.METRICS)

    def plots(self) -> list[Path]:
        return [self.path / name for name in (self.ROC, self.PR, self.CONFUSION)]

    def predictions(self) -> list[dict[str, str]]:
        with open(self.path / self.PREDICTIONS, newline="") as handle:
            return list(csv.DictReader(handle))

    @classmethod
    def plot_paths(cls, out: Path) -> tuple[Path, Path, Path]:
        return out / cls.ROC, out / cls.PR, out / cls.CONFUSION

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
