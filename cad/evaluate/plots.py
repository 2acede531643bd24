"""Evaluation plots as PNG files, one function per plot.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas, never through
``pyplot``: no GUI backend, no global figure registry to leak into, safe in worker
processes. Every function writes ``path`` (creating its folder) and returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

_DPI = 120
CLASS_NAMES = ("negative", "positive")


def _new_figure(width: float = 5.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()
    return path


def _two_classes(y_true: np.ndarray) -> bool:
    return np.unique(y_true).size == 2


def roc_band(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int = 200, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR grid, 2.5% and 97.5% TPR) over patient-bootstrap resamples of the ROC curve."""
    grid = np.linspace(0, 1, 101)
    keys, index = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(keys), len(keys))
        rows = np.concatenate([np.flatnonzero(index == k) for k in chosen])
        if len(np.unique(y[rows])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[rows], p[rows])
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return grid, grid * np.nan, grid * np.nan
    stacked = np.asarray(curves)
    return grid, np.percentile(stacked, 2.5, axis=0), np.percentile(stacked, 97.5, axis=0)


def plot_roc(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    path: str | Path,
    title: str,
    groups: ArrayLike | None = None,
) -> Path:
    """ROC curve with its AUC (and a 95% patient-bootstrap band when ``groups`` are given);
    a note instead of a curve when only one class is present."""
    y, p = np.asarray(y_true).ravel(), np.asarray(y_prob, dtype=float).ravel()
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    if _two_classes(y):
        fpr, tpr, _ = roc_curve(y, p)
        if groups is not None:
            grid, low, high = roc_band(y, p, np.asarray(groups).ravel())
            ax.fill_between(grid, low, high, alpha=0.25, label="95% patient bootstrap")
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc_score(y, p):.3f}")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="1 - specificity (FPR)",
        ylabel="sensitivity (TPR)",
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, title: str) -> Path:
    """Precision-recall curve with average precision and the prevalence baseline."""
    y, p = np.asarray(y_true).ravel(), np.asarray(y_prob, dtype=float).ravel()
    fig = _new_figure()
    ax = fig.add_subplot()
    prevalence = float(np.mean(y == 1)) if y.size else 0.0
    ax.axhline(prevalence, ls="--", color="0.6", lw=1, label=f"prevalence = {prevalence:.2f}")
    if _two_classes(y):
        precision, recall, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p)
        ax.step(recall, precision, where="post", lw=2, label=f"AP = {ap:.3f}")
    else:
        ax.text(0.5, 0.5, "PR undefined: one class only", ha="center", va="center")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=title,
    )
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_confusion(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    path: str | Path,
    title: str,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """2x2 confusion matrix with counts and row (true-class) percentages."""
    y, pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    cm = confusion_matrix(y, pred, labels=[0, 1])
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = _new_figure(4.5, 4.0)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        colour = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n{100 * share[i, j]:.0f}%", ha="center", va="center", color=colour)
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    return _save(fig, path)


def plot_layer_scores(
    depths: Sequence[float],
    names: Sequence[str],
    f1_mean: Sequence[float],
    f1_std: Sequence[float],
    chosen: str,
    path: str | Path,
    title: str,
) -> Path:
    """Cross-validated SVM F1 of every candidate node against its depth, chosen node marked."""
    if not len(depths) == len(names) == len(f1_mean) == len(f1_std):
        raise ValueError("depths, names, f1_mean and f1_std must have the same length.")
    x = np.asarray(depths, dtype=float)
    mean = np.asarray(f1_mean, dtype=float)
    std = np.asarray(f1_std, dtype=float)
    fig = _new_figure(max(5.0, 0.35 * len(names) + 2.0), 4.5)
    ax = fig.add_subplot()
    ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=3, lw=1.5, label="CV F1 (mean ± sd)")
    if chosen in names:
        k = list(names).index(chosen)
        ax.axvline(x[k], color="tab:red", ls=":", lw=1)
        ax.plot(
            x[k],
            mean[k],
            marker="*",
            ms=16,
            color="tab:red",
            ls="none",
            label=f"fine-tuning node: {chosen}",
        )
    ax.set_xticks(x, list(names), rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), xlabel="candidate node (by depth)", ylabel="F1", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[Mapping[str, float]], path: str | Path, title: str
) -> Path:
    """Train/validation loss and validation F1 per epoch (rows: epoch, train_loss, val_loss,
    val_f1; missing values are skipped)."""
    fig = _new_figure(8.0, 3.8)
    loss_ax, f1_ax = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[float], list[float]]:
        rows = [r for r in history if r.get(key) is not None]
        return [float(r["epoch"]) for r in rows], [float(r[key]) for r in rows]

    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        epochs, values = series(key)
        if values:
            loss_ax.plot(epochs, values, marker="o", ms=3, label=label)
    epochs, values = series("val_f1")
    if values:
        f1_ax.plot(epochs, values, marker="o", ms=3, color="tab:green", label="validation F1")
        best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
        f1_ax.plot(
            epochs[best],
            values[best],
            marker="*",
            ms=14,
            color="tab:red",
            ls="none",
            label=f"best epoch {epochs[best]:g}",
        )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    f1_ax.set(xlabel="epoch", ylabel="F1", ylim=(0, 1.02), title="validation F1")
    for ax, where in ((loss_ax, "upper right"), (f1_ax, "lower right")):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc=where)
    fig.suptitle(title)
    return _save(fig, path)


def plot_layer_comparison(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "Layer F1 by relative depth",
    chance: float | None = None,
) -> Path:
    """Overlay layer-F1 curves of several backbones against relative depth (0..1), each
    curve's best node starred, and the chance F1 (calling every slice positive) dashed."""
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    for label, (fractions, means) in curves.items():
        x = np.asarray(fractions, dtype=float)
        y = np.asarray(means, dtype=float)
        line = ax.plot(x, y, marker="o", ms=3, label=label)[0]
        if y.size and np.isfinite(y).any():
            best = int(np.nanargmax(y))
            ax.plot(x[best], y[best], marker="*", ms=12, color=line.get_color(), ls="none")
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance (all positive) {chance:.2f}")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.02), xlabel="relative depth of node", ylabel="CV F1", title=title
    )
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    return _save(fig, path)


def plot_roc_comparison(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str
) -> Path:
    """The test ROC curves of several backbones on one chart, each with its AUC."""
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for label, (y_true, y_prob) in curves.items():
        y, p = np.asarray(y_true).ravel(), np.asarray(y_prob, dtype=float).ravel()
        if _two_classes(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {roc_auc_score(y, p):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity (FPR)", title=title)
    ax.set(ylabel="sensitivity (TPR)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_metric_comparison(
    rows: Mapping[str, Mapping[str, tuple[float, float, float]]],
    chance: Mapping[str, float],
    path: str | Path,
    title: str,
) -> Path:
    """Test metrics per backbone as bars with their patient-bootstrap intervals as error
    bars (``rows[label][metric] = (value, low, high)``), each metric's chance level dashed."""
    metrics = list(chance)
    fig = _new_figure(1.6 + 1.8 * len(metrics), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(metrics), dtype=float)
    for i, (label, values) in enumerate(rows.items()):
        v = np.array([values[m][0] for m in metrics], dtype=float)
        err = np.array(
            [[v[j] - values[m][1], values[m][2] - v[j]] for j, m in enumerate(metrics)]
        ).T
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            v,
            width,
            yerr=np.abs(err),
            capsize=3,
            label=label,
        )
    for j, m in enumerate(metrics):
        ax.hlines(chance[m], j - 0.45, j + 0.45, colors="grey", linestyles="--", lw=1)
    ax.plot([], [], color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, metrics)
    ax.set(ylim=(0, 1.05), ylabel="test value (95% patient bootstrap)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    return _save(fig, path)


def plot_reliability(
    y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, title: str, bins: int = 10
) -> Path:
    """Observed positive rate against mean predicted probability per bin (sklearn's
    ``calibration_curve``), with the counts per bin below."""
    from sklearn.calibration import calibration_curve

    y, p = np.asarray(y_true).ravel(), np.asarray(y_prob, dtype=float).ravel()
    fig = _new_figure(5.0, 5.5)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
    if _two_classes(y):
        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
        top.plot(predicted, observed, marker="o", lw=2, label="model")
    top.set(ylim=(0, 1.02), ylabel="observed positive rate", title=title)
    top.legend(loc="upper left")
    bottom.hist(p, bins=bins, range=(0, 1), color="0.5")
    bottom.set(xlim=(0, 1), xlabel="predicted probability", ylabel="slices")
    return _save(fig, path)


def plot_decision_curve(
    thresholds: Sequence[float],
    model: Sequence[float],
    treat_all: Sequence[float],
    path: str | Path,
    title: str,
) -> Path:
    """Net benefit of acting on the model, on everyone and on no one, by threshold."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(thresholds, model, lw=2, label="model")
    ax.plot(thresholds, treat_all, lw=1, ls="--", label="call every slice positive")
    ax.axhline(0, color="0.4", lw=1, label="call none positive")
    top = max([*model, *treat_all, 0.01])
    ax.set(ylim=(-0.05 * top - 0.01, 1.1 * top), xlabel="threshold probability",
           ylabel="net benefit", title=title)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, path)
