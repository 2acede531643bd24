"""Metrics, patient-level bootstrap intervals and threshold choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cad.evaluate.metrics import (
    METRICS,
    _count_metrics,
    _resample_weights,
    _weighted_auc,
    binary_metrics,
    bootstrap_metrics,
    choose_threshold,
)


def _cohort(n_patients: int, slices: int = 8, seed: int = 0):
    """Per-patient label with noisy slice probabilities that mostly agree with it."""
    rng = np.random.default_rng(seed)
    label = np.repeat(rng.random(n_patients) < 0.4, slices).astype(int)
    prob = np.clip(0.25 + 0.4 * label + rng.normal(0, 0.2, label.size), 0, 1)
    groups = np.repeat([f"pat-{i:04d}" for i in range(n_patients)], slices)
    return label, prob, groups


def test_known_confusion_matrix_gives_known_values():
    # threshold 0.5: TP=2 FN=1 FP=1 TN=4
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.7, 0.2, 0.6, 0.1, 0.3, 0.4, 0.05]
    m = binary_metrics(y, p, 0.5)
    assert set(m) == set(METRICS)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))


def test_threshold_is_inclusive():
    assert binary_metrics([1, 0], [0.5, 0.4], 0.5)["sensitivity"] == 1.0


def test_undefined_metrics_are_nan_not_errors():
    one_class = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(one_class["roc_auc"])
    assert math.isnan(one_class["specificity"])  # no negatives
    assert one_class["npv"] == 0.0  # the one negative prediction is wrong
    assert one_class["sensitivity"] == pytest.approx(2 / 3)
    none_predicted = binary_metrics([1, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(none_predicted["ppv"])
    assert none_predicted["f1"] == 0.0  # a positive was missed: F1 is defined and zero


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match="'ci'"):
        bootstrap_metrics([0, 1], [0.2, 0.8], 0.5, ["a", "b"], ci=1.5)


def test_vectorised_counts_match_sklearn():
    y, p, _ = _cohort(40, seed=3)
    pred = p >= 0.5
    counts = [np.sum((y == a) & (pred == b)) for a, b in ((1, 1), (0, 1), (0, 0), (1, 0))]
    fast = _count_metrics(*(np.array([c]) for c in counts))
    reference = binary_metrics(y, p, 0.5)
    for name, values in fast.items():
        assert values[0] == pytest.approx(reference[name])


def test_weighted_auc_matches_sklearn_sample_weights_with_ties():
    y, p, groups = _cohort(30, seed=4)
    p = np.round(p, 1)  # many ties
    _, group = np.unique(groups, return_inverse=True)
    weights = _resample_weights(30, 5, np.random.default_rng(0))
    fast = _weighted_auc(weights, group, y, p)
    for row, value in zip(weights, fast, strict=True):
        assert value == pytest.approx(roc_auc_score(y, p, sample_weight=row[group]))


def test_resample_weights_draw_every_patient_count_once_per_resample():
    weights = _resample_weights(7, 50, np.random.default_rng(0))
    assert weights.shape == (50, 7)
    assert (weights.sum(axis=1) == 7).all()


def test_bootstrap_interval_contains_estimate_and_shrinks_with_more_patients():
    y, p, g = _cohort(20)
    small = bootstrap_metrics(y, p, 0.5, g, n_boot=400)
    y, p, g = _cohort(400)
    large = bootstrap_metrics(y, p, 0.5, g, n_boot=400)
    for result in (small, large):
        assert set(result) == set(METRICS)
        for name in METRICS:
            r = result[name]
            assert r["low"] <= r["value"] <= r["high"], name
    for name in ("f1", "roc_auc", "accuracy"):
        assert large[name]["high"] - large[name]["low"] < small[name]["high"] - small[name]["low"]


def test_bootstrap_is_reproducible_for_a_seed():
    y, p, g = _cohort(30)
    first = bootstrap_metrics(y, p, 0.5, g, n_boot=200, seed=1)
    assert first == bootstrap_metrics(y, p, 0.5, g, n_boot=200, seed=1)
    assert first != bootstrap_metrics(y, p, 0.5, g, n_boot=200, seed=2)


def test_bootstrap_resamples_patients_not_slices():
    # Patient A: 50 correctly detected positive slices; patient B: 50 false-positive slices.
    # Resampling patients gives accuracy 1 (A, A), 0.5 (A, B) or 0 (B, B); resampling slices
    # would keep it near 0.5. A 95% interval over patient draws therefore spans [0, 1].
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    p = np.full(100, 0.9)
    groups = np.repeat(["A", "B"], 50)
    result = bootstrap_metrics(y, p, 0.5, groups, n_boot=1000, seed=0)
    assert result["accuracy"]["value"] == 0.5
    assert result["accuracy"]["low"] == 0.0
    assert result["accuracy"]["high"] == 1.0
    assert result["sensitivity"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_single_patient_bootstrap_collapses_to_the_estimate():
    y, p, _ = _cohort(1, slices=60)
    y[:20] = 1 - y[:20]  # both classes within the one patient
    result = bootstrap_metrics(y, p, 0.5, np.zeros(y.size), n_boot=100)
    for name in METRICS:
        r = result[name]
        assert r["low"] == pytest.approx(r["value"]) and r["high"] == pytest.approx(r["value"])


def test_bootstrap_skips_resamples_where_a_metric_is_undefined():
    # Two one-slice patients of different class: half the resamples hold one class only.
    result = bootstrap_metrics([0, 1], [0.2, 0.8], 0.5, ["a", "b"], n_boot=200)
    assert result["roc_auc"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_choose_threshold_separable_data_gives_perfect_f1():
    y = np.r_[np.zeros(20), np.ones(10)].astype(int)
    p = np.r_[np.linspace(0.05, 0.2, 20), np.linspace(0.3, 0.4, 10)]  # all below 0.5
    threshold = choose_threshold(y, p)
    assert 0.2 < threshold <= 0.3
    assert binary_metrics(y, p, threshold)["f1"] == 1.0


def test_choose_threshold_prefers_half_on_ties_and_when_one_class():
    y = [0, 0, 1, 1]
    assert choose_threshold(y, [0.1, 0.2, 0.8, 0.9]) == 0.5
    assert choose_threshold([1, 1, 1], [0.1, 0.2, 0.3]) == 0.5
    assert choose_threshold([0, 0], [0.7, 0.9]) == 0.5


def test_choose_threshold_maximises_f1():
    y, p, _ = _cohort(60, seed=5)
    best = binary_metrics(y, p, choose_threshold(y, p))["f1"]
    for t in np.linspace(0.01, 0.99, 99):
        assert binary_metrics(y, p, t)["f1"] <= best + 1e-12


def test_chance_levels_are_those_of_uninformed_rules():
    from cad.evaluate.metrics import binary_metrics, chance_levels

    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])  # prevalence 0.2
    chance = chance_levels(y)
    all_positive = binary_metrics(y, np.ones(len(y)), 0.5)["f1"]
    assert chance["prevalence"] == pytest.approx(0.2)
    assert chance["f1_all_positive"] == pytest.approx(all_positive) == pytest.approx(2 * 0.2 / 1.2)
    assert chance["f1_prevalence"] == pytest.approx(0.2) and chance["roc_auc"] == 0.5
    assert chance_levels(np.zeros(4))["f1_all_positive"] == 0.0


def test_patient_level_is_positive_if_any_slice_is_and_scores_the_highest_slice():
    from cad.evaluate.metrics import patient_level

    y = np.array([0, 1, 0, 0, 0, 1])
    p = np.array([0.1, 0.9, 0.3, 0.2, 0.4, 0.6])
    g = np.array(["b", "b", "a", "a", "c", "c"])
    labels, scores, keys = patient_level(y, p, g)
    assert keys.tolist() == ["b", "a", "c"]  # order of first appearance
    assert labels.tolist() == [1, 0, 1]
    assert scores.tolist() == [0.9, 0.3, 0.6]
