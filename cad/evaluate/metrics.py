"""Binary classification metrics with patient-level bootstrap confidence intervals.

Slices of one patient are not independent, so confidence intervals resample *patients*
with replacement (every slice of a drawn patient comes along) and report the percentile
interval. The bootstrap works on per-patient confusion counts and weighted ranks, so 1000
resamples of a few thousand slices take well under a second.

A sample is predicted positive when its probability is ``>= threshold``. Metrics that are
undefined for the data (AUC with one class, PPV with no positive predictions, ...) are NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

METRICS = ("f1", "roc_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")

# Bound on resamples x slices held in memory at once by the AUC bootstrap.
_CHUNK_ELEMENTS = 4_000_000


def _check_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(
            f"y_true and y_prob must have the same length. Got {y.size} and {p.size} instead."
        )
    if y.size == 0:
        raise ValueError("y_true is empty; metrics need at least one sample.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold only 0/1 labels. Got {np.unique(y)[:5]} instead.")
    if not np.isfinite(p).all():
        raise ValueError("y_prob must be finite (no NaN or inf).")
    return y.astype(np.int8), p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _count_metrics(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict:
    """Threshold metrics from (arrays of) confusion counts; same definitions as sklearn."""
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict[str, float]:
    """All of ``METRICS`` for one set of predictions (sklearn where it has the metric)."""
    y, p = _check_inputs(y_true, y_prob)
    pred = (p >= threshold).astype(np.int8)
    nan = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        auc = roc_auc_score(y, p) if np.unique(y).size == 2 else nan
        return {
            "f1": float(f1_score(y, pred, zero_division=nan)),
            "roc_auc": float(auc),
            "accuracy": float(accuracy_score(y, pred)),
            "sensitivity": float(recall_score(y, pred, zero_division=nan)),
            "specificity": float(_ratio(tn, tn + fp)),
            "ppv": float(precision_score(y, pred, zero_division=nan)),
            "npv": float(_ratio(tn, tn + fn)),
        }


def _resample_weights(n_groups: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_groups) multiplicity of each patient in each resample (draws with replacement)."""
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    flat = draws + (np.arange(n_boot) * n_groups)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups)


def _weighted_auc(
    weights: np.ndarray, group: np.ndarray, y: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count half) for each row of per-patient ``weights``."""
    order = np.argsort(p, kind="stable")
    g, ys, ps = group[order], y[order], p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # bins of tied scores
    pos = ys.astype(float)
    neg = 1.0 - pos
    chunk = max(1, _CHUNK_ELEMENTS // max(1, y.size))
    out = np.empty(weights.shape[0])
    for lo in range(0, weights.shape[0], chunk):
        w = weights[lo : lo + chunk][:, g].astype(float)
        pos_bin = np.add.reduceat(w * pos, starts, axis=1)
        neg_bin = np.add.reduceat(w * neg, starts, axis=1)
        neg_below = np.cumsum(neg_bin, axis=1) - neg_bin
        num = (pos_bin * (neg_below + 0.5 * neg_bin)).sum(axis=1)
        out[lo : lo + chunk] = _ratio(num, pos_bin.sum(axis=1) * neg_bin.sum(axis=1))
    return out


def _percentile_interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_metrics(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    groups: ArrayLike,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Point estimate and patient-level bootstrap percentile interval of every metric.

    Returns ``{"f1": {"value": .., "low": .., "high": ..}, ...}`` for each of ``METRICS``.
    ``groups`` holds the patient (pseudonym) of every sample; each resample draws as many
    patients as there are, with replacement. Resamples where a metric is undefined (e.g.
    AUC when only one class was drawn) are left out of that metric's interval.
    """
    y, p = _check_inputs(y_true, y_prob)
    g_raw = np.asarray(groups).ravel()
    if g_raw.shape != y.shape:
        raise ValueError(
            f"groups must have one entry per sample. Got {g_raw.size} for {y.size} samples."
        )
    if n_boot < 1:
        raise ValueError(f"The 'n_boot' parameter must be >= 1. Got {n_boot} instead.")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"The 'ci' parameter must be in the range (0, 1). Got {ci} instead.")

    _, group = np.unique(g_raw, return_inverse=True)
    n_groups = int(group.max()) + 1
    pred = p >= threshold
    cells = np.stack([(y == 1) & pred, (y == 0) & pred, (y == 0) & ~pred, (y == 1) & ~pred], 1)
    per_group = np.stack(
        [np.bincount(group, weights=cells[:, k], minlength=n_groups) for k in range(4)], 1
    )  # (n_groups, [tp, fp, tn, fn])

    weights = _resample_weights(n_groups, n_boot, np.random.default_rng(seed))
    tp, fp, tn, fn = (weights @ per_group).T
    samples = _count_metrics(tp, fp, tn, fn)
    samples["roc_auc"] = _weighted_auc(weights, group, y, p)

    point = binary_metrics(y, p, threshold)
    out: dict[str, dict[str, float]] = {}
    for name in METRICS:
        low, high = _percentile_interval(samples[name], ci)
        out[name] = {"value": point[name], "low": low, "high": high}
    return out


def choose_threshold(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Decision threshold maximising F1 on (validation) data.

    Candidates are 0.5, the lowest score and the midpoints between consecutive distinct
    scores, so the chosen threshold sits between the classes rather than on a sample. Ties
    go to the candidate closest to 0.5; with only one class present the answer is 0.5.
    """
    y, p = _check_inputs(y_true, y_prob)
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    if pos.size == 0 or neg.size == 0:
        return 0.5
    scores = np.unique(p)
    candidates = np.r_[0.5, scores[0], (scores[1:] + scores[:-1]) / 2.0]
    tp = pos.size - np.searchsorted(pos, candidates, side="left")
    fp = neg.size - np.searchsorted(neg, candidates, side="left")
    f1 = 2.0 * tp / (2.0 * tp + fp + (pos.size - tp))
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def chance_levels(y_true: ArrayLike) -> dict[str, float]:
    """What an uninformed rule scores on these labels: the yardstick for every metric.

    ``f1_all_positive``: F1 of calling everything positive, 2p / (1 + p); ``f1_prevalence``:
    expected F1 of guessing positive at random with probability p (precision = recall = p);
    ROC AUC of any constant or random score is 0.5.
    """
    y = np.asarray(y_true).ravel()
    p = float(np.mean(y)) if y.size else 0.0
    return {
        "prevalence": p,
        "f1_all_positive": 2 * p / (1 + p) if p > 0 else 0.0,
        "f1_prevalence": p,
        "roc_auc": 0.5,
    }


def patient_level(
    y_true: ArrayLike, y_prob: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patient: label (positive if any slice is), score (the highest slice probability,
    so the patient is called positive at a threshold exactly when one of its slices is) and
    the patient key, in order of first appearance."""
    y, p = _check_inputs(y_true, y_prob)
    g = np.asarray(groups).ravel()
    keys, first, index = np.unique(g, return_index=True, return_inverse=True)
    labels = np.zeros(len(keys), dtype=int)
    scores = np.full(len(keys), -np.inf)
    np.maximum.at(labels, index, y.astype(int))
    np.maximum.at(scores, index, p)
    order = np.argsort(first, kind="stable")
    return labels[order], scores[order], keys[order]
