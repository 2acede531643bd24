"""Score each candidate node with the same SVM by patient-grouped cross-validated F1.

scaler -> (resampler) -> SVM in one imbalanced-learn pipeline, so scaling and resampling
are fitted inside each training fold only. Folds are the split stage's patient folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from imblearn.pipeline import Pipeline
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from cad.artifacts.probe import LayerScore
from cad.config import BalanceConfig, ProbeConfig
from cad.data.balance import make_sampler

LIBSVM_MAX_SAMPLES = 5000


def solver_for(cfg: ProbeConfig, n_samples: int) -> str:
    """libsvm solves the linear SVM in its kernel (dual) form: cost grows with samples^2 but
    not with the feature dimension, which is what probing CNN layers looks like (hundreds
    to a few thousand slices, up to 25k-dim features). liblinear scales to many samples
    but its coordinate descent crawls on high-dimensional, non-separable features."""
    if cfg.kernel != "linear" or cfg.solver == "libsvm":
        return "libsvm"
    if cfg.solver == "liblinear":
        return "liblinear"
    return "libsvm" if n_samples <= LIBSVM_MAX_SAMPLES else "liblinear"


class LinearKernel(TransformerMixin, BaseEstimator):
    """``X -> X @ X_fit.T``: the linear kernel against the samples it was fitted on, the
    input of ``SVC(kernel="precomputed")``. libsvm's own linear kernel computes every dot
    product in a scalar loop; one BLAS product computes them all (the probe of ResNet50's
    pyramid features ran 5x faster, README Speed) and the SVM it fits is the same."""

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> LinearKernel:
        self.fitted_ = np.ascontiguousarray(x, dtype=np.float64)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.fitted_.T


def make_probe(cfg: ProbeConfig, balance: BalanceConfig, n_samples: int = 0) -> Pipeline:
    """scaler -> (resampler) -> SVM; libsvm's linear SVM on a precomputed kernel."""
    steps: list[tuple[str, object]] = [("scale", StandardScaler())]
    sampler = make_sampler(balance)
    if sampler is not None:
        steps.append(("resample", sampler))
    if solver_for(cfg, n_samples) == "liblinear":
        steps.append(
            ("svm", LinearSVC(C=cfg.C, max_iter=cfg.max_iter, dual="auto", random_state=0))
        )
    elif cfg.kernel == "linear":
        steps.append(("kernel", LinearKernel()))
        steps.append(("svm", SVC(C=cfg.C, kernel="precomputed", random_state=0)))
    else:
        steps.append(("svm", SVC(C=cfg.C, kernel=cfg.kernel, cache_size=1000, random_state=0)))
    return Pipeline(steps)


def _score_node(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, cfg: ProbeConfig, balance: BalanceConfig
) -> list[float]:
    scores = []
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        model = make_probe(cfg, balance, int(train.sum())).fit(np.asarray(x[train]), y[train])
        scores.append(float(f1_score(y[test], model.predict(np.asarray(x[test])), zero_division=0)))
    return scores


def score_nodes(
    features: dict[str, np.ndarray],
    depths: dict[str, int],
    labels: np.ndarray,
    folds: np.ndarray,
    cfg: ProbeConfig,
    balance: BalanceConfig,
) -> list[LayerScore]:
    """CV F1 of every node; ``folds[i]`` is the patient fold of sample ``i``.

    Nodes run on joblib threads, widest first so that the longest fits start early: libsvm
    and liblinear release the GIL, and threads share the (memory-mapped) features instead of
    copying them into worker processes (``benchmarks/bench_probe.py``: 1.1-1.5x faster than
    processes here).
    """
    nodes = list(features)
    widest_first = sorted(nodes, key=lambda node: -features[node].shape[1])
    scored = Parallel(n_jobs=cfg.runtime.n_jobs, prefer="threads")(
        delayed(_score_node)(features[node], labels, folds, cfg, balance) for node in widest_first
    )
    by_node = dict(zip(widest_first, scored, strict=True))
    results = [by_node[node] for node in nodes]
    return [
        LayerScore(
            node=node,
            depth=depths[node],
            dim=int(features[node].shape[1]),
            f1_mean=float(np.mean(s)),
            f1_std=float(np.std(s)),
            fold_f1=list(s),
        )
        for node, s in zip(nodes, results, strict=True)
    ]


def choose_finetune_node(scores: Sequence[LayerScore]) -> LayerScore:
    """Best mean F1; ties go to the shallower node."""
    return sorted(scores, key=lambda s: (-round(s.f1_mean, 12), s.depth))[0]
