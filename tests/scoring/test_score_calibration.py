"""A package's calibration reaches ``cad score``: probabilities are the calibrated ones and
the decisions follow the threshold on that scale."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from score_helpers import SECRET, make_model, package_meta

from cad.artifacts.model_package import Calibration
from cad.finetune.package import load_package, save_package
from cad.scoring.api import score_folder


def _slices(path):
    with open(path, newline="") as handle:
        return {r["sample"]: r for r in csv.DictReader(handle) if r["level"] == "slice"}


def test_scored_probabilities_are_calibrated(export, baseline, tmp_path, monkeypatch):
    monkeypatch.setenv("CAD_SECRET", SECRET)
    calibration = Calibration(method="temperature", temperature=2.0)
    threshold = float(calibration.apply(np.array([0.5]))[0])  # the same decisions
    meta = package_meta(threshold, calibration=calibration)
    package = save_package(make_model(), meta, tmp_path / "model")
    assert load_package(package).meta.calibration == calibration
    out = tmp_path / "p.csv"
    score_folder(package, export.root, out, **baseline.options)
    raw, calibrated = _slices(baseline.out), _slices(out)
    assert raw.keys() == calibrated.keys() and raw
    p_raw = np.array([float(raw[k]["probability"]) for k in raw])
    p_cal = np.array([float(calibrated[k]["probability"]) for k in raw])
    assert p_cal == pytest.approx(calibration.apply(p_raw), abs=2e-5)
    assert not np.allclose(p_cal, p_raw)
    assert [raw[k]["label"] for k in raw] == [calibrated[k]["label"] for k in raw]
