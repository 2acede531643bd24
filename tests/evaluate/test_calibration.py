"""Calibration (temperature, isotonic), ECE/Brier and operating points on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from cad.artifacts.model_package import Calibration
from cad.evaluate.calibration import (
    brier,
    expected_calibration_error,
    fit_calibration,
    net_benefit,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)


def _overconfident(n: int = 4000, seed: int = 0):
    """Labels drawn from true probabilities; predictions with the logit doubled."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.02, 0.98, n)
    y = (rng.random(n) < true).astype(int)
    logit = np.log(true / (1 - true))
    return y, 1 / (1 + np.exp(-2 * logit))


def test_temperature_undoes_an_overconfident_model():
    y, p = _overconfident()
    cal = fit_calibration("temperature", y, p)
    assert cal is not None and cal.temperature == pytest.approx(2.0, rel=0.15)
    fixed = cal.apply(p)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, p) / 2
    assert brier(y, fixed) < brier(y, p)
    order = np.argsort(p)
    assert np.all(np.diff(fixed[order]) >= -1e-7)  # monotone: the ranking (AUC) is kept


def test_isotonic_is_monotone_bounded_and_stored_as_numbers():
    y, p = _overconfident(seed=1)
    cal = fit_calibration("isotonic", y, p)
    assert cal is not None and cal.method == "isotonic" and len(cal.knots_x) >= 2
    again = Calibration.model_validate_json(cal.model_dump_json())  # JSON, no pickle
    grid = np.linspace(0, 1, 101)
    out = again.apply(grid)
    assert np.all(np.diff(out) >= -1e-7) and out.min() >= 0 and out.max() <= 1
    assert expected_calibration_error(y, again.apply(p)) < expected_calibration_error(y, p)


def test_none_or_one_class_fits_nothing():
    assert fit_calibration("none", np.array([0, 1]), np.array([0.2, 0.8])) is None
    assert fit_calibration("temperature", np.zeros(5), np.full(5, 0.3)) is None


def test_operating_points_and_net_benefit_on_a_known_ranking():
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.9, 0.6, 0.7, 0.8, 0.95])
    # specificity >= 0.90 allows no false positive (one would give 8/9 = 0.89)
    assert sensitivity_at_specificity(y, p, 0.90) == pytest.approx(0.25)  # only 0.95 above 0.9
    assert specificity_at_sensitivity(y, p, 1.0) == pytest.approx(8 / 9)
    t = np.array([0.0001, 0.55])
    everyone = y.mean() - (1 - y.mean()) * t / (1 - t)
    assert net_benefit(y, np.ones_like(p), t) == pytest.approx(everyone)
    assert net_benefit(y, p, [0.55])[0] == pytest.approx(4 / 13 - 1 / 13 * 0.55 / 0.45)
