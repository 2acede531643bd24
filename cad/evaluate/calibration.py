"""Calibration of predicted probabilities and the operating-point figures a reader needs.

Temperature scaling (Guo et al., ICML 2017) of the binary logit, fitted by maximum
likelihood on the validation patients, or isotonic regression (scikit-learn); both stored
as plain numbers in the model package. ECE, Brier score, reliability curve (scikit-learn's
``calibration_curve``), sensitivity at a fixed specificity and the reverse (from
``roc_curve``), and the decision curve's net benefit (Vickers & Elkin 2006).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cad.artifacts.model_package import CALIBRATION_EPS as _EPS
from cad.artifacts.model_package import Calibration


def fit_calibration(method: str, labels: np.ndarray, prob: np.ndarray) -> Calibration | None:
    """Fit ``method`` (temperature | isotonic | none) on validation labels and probabilities."""
    y = np.asarray(labels).astype(int)
    if method == "none" or len(np.unique(y)) < 2:
        return None
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibration(
            method="isotonic",
            knots_x=[float(v) for v in iso.X_thresholds_],
            knots_y=[float(v) for v in iso.y_thresholds_],
        )
    from scipy.optimize import minimize_scalar

    logit = np.log(p / (1 - p))

    def nll(log_t: float) -> float:
        z = logit / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - y * z))  # -log-likelihood of Bernoulli

    best = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return Calibration(method="temperature", temperature=float(np.exp(best.x)))


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width bins, weighted by count."""
    y, p = np.asarray(y).astype(float), np.asarray(prob, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def brier(y: np.ndarray, prob: np.ndarray) -> float:
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y).astype(int), np.asarray(prob, dtype=float)))


def sensitivity_at_specificity(y: np.ndarray, prob: np.ndarray, specificity: float) -> float:
    """The best sensitivity among thresholds whose specificity is at least ``specificity``."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, prob)
    ok = (1 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def specificity_at_sensitivity(y: np.ndarray, prob: np.ndarray, sensitivity: float) -> float:
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, prob)
    ok = tpr >= sensitivity - 1e-12
    return float((1 - fpr[ok]).max()) if ok.any() else 0.0


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Decision-curve net benefit TP/n - FP/n * t/(1-t) at each threshold probability t."""
    y, p = np.asarray(y).astype(int), np.asarray(prob, dtype=float)
    n = max(len(y), 1)
    out = []
    for t in thresholds:
        called = p >= t
        tp, fp = np.sum(called & (y == 1)), np.sum(called & (y == 0))
        out.append(tp / n - fp / n * t / (1 - t))
    return np.asarray(out, dtype=float)
