"""Every plot writes a non-empty PNG and leaves no open figure behind."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cad.evaluate import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.65, 0.3, 0.7, 0.9])
HISTORY = [
    {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_f1": 0.5 + 0.05 * e}
    for e in range(1, 7)
]

CASES = {
    "roc": lambda path: plots.plot_roc(Y, P, path, "ROC"),
    "roc_one_class": lambda path: plots.plot_roc(np.ones(4), P[:4], path, "ROC one class"),
    "pr": lambda path: plots.plot_pr(Y, P, path, "PR"),
    "confusion": lambda path: plots.plot_confusion(Y, (P >= 0.5).astype(int), path, "CM"),
    "layer_scores": lambda path: plots.plot_layer_scores(
        [1, 4, 8, 14, 17],
        ["conv1", "layer1", "layer2", "layer3", "layer4"],
        [0.55, 0.7, 0.82, 0.78, 0.74],
        [0.05, 0.04, 0.03, 0.05, 0.06],
        "layer2",
        path,
        "resnet50",
    ),
    "training_curves": lambda path: plots.plot_training_curves(HISTORY, path, "round 1"),
    "training_curves_partial": lambda path: plots.plot_training_curves(
        [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}], path, "no val"
    ),
    "layer_comparison": lambda path: plots.plot_layer_comparison(
        {
            "vgg16": ([0.1, 0.5, 0.9], [0.6, 0.85, 0.7]),
            "resnet50": ([0.2, 0.6, 1.0], [0.7, 0.8, 0.75]),
        },
        path,
    ),
    "roc_comparison": lambda path: plots.plot_roc_comparison(
        {"vgg16": (Y, P), "resnet50": (Y, 1 - P), "one class": (np.ones(4), P[:4])}, path, "ROC"
    ),
    "metric_comparison": lambda path: plots.plot_metric_comparison(
        {
            "vgg16": {"f1": (0.7, 0.6, 0.8), "roc_auc": (0.8, 0.7, 0.9)},
            "resnet50": {"f1": (0.5, 0.3, 0.6), "roc_auc": (0.6, 0.5, 0.75)},
        },
        {"f1": 0.3, "roc_auc": 0.5},
        path,
        "test",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_writes_png_and_closes_figures(name: str, tmp_path: Path):
    before = plt.get_fignums()
    path = tmp_path / "sub" / f"{name}.png"
    returned = CASES[name](path)
    assert Path(returned) == path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert plt.get_fignums() == before == []


def test_layer_scores_rejects_mismatched_lengths(tmp_path: Path):
    with pytest.raises(ValueError, match="same length"):
        plots.plot_layer_scores([1, 2], ["a"], [0.5, 0.6], [0.1, 0.1], "a", tmp_path / "x.png", "")
