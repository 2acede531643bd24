"""Score each candidate node with the same SVM by patient-grouped cross-validated F1.

scaler -> (resampler) -> SVM in one imbalanced-learn pipeline, so scaling and resampling
are fitted inside each training fold only. Folds are the split stage's patient folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from imblearn.pipeline import Pipeline
from joblib import Parallel, delayed
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from cad.config import BalanceConfig, ProbeConfig
from cad.data.balance import make_sampler


@dataclass(frozen=True)
class NodeScore:
    node: str
    depth: int
    dim: int
    f1_mean: float
    f1_std: float
    fold_f1: tuple[float, ...]

    def as_row(self) -> dict:
        row = asdict(self)
        row["fold_f1"] = " ".join(f"{v:.4f}" for v in self.fold_f1)
        return row


def make_probe(cfg: ProbeConfig, balance: BalanceConfig) -> Pipeline:
    if cfg.kernel == "linear":
        svm = LinearSVC(C=cfg.C, max_iter=cfg.max_iter, dual="auto", random_state=0)
    else:
        svm = SVC(C=cfg.C, kernel=cfg.kernel, random_state=0)
    steps = [("scale", StandardScaler())]
    sampler = make_sampler(balance)
    if sampler is not None:
        steps.append(("resample", sampler))
    steps.append(("svm", svm))
    return Pipeline(steps)


def _score_node(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, cfg: ProbeConfig, balance: BalanceConfig
) -> list[float]:
    scores = []
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        model = make_probe(cfg, balance).fit(np.asarray(x[train]), y[train])
        scores.append(float(f1_score(y[test], model.predict(np.asarray(x[test])), zero_division=0)))
    return scores


def score_nodes(
    features: dict[str, np.ndarray],
    depths: dict[str, int],
    labels: np.ndarray,
    folds: np.ndarray,
    cfg: ProbeConfig,
    balance: BalanceConfig,
) -> list[NodeScore]:
    """CV F1 of every node; ``folds[i]`` is the patient fold of sample ``i``."""
    nodes = list(features)
    results = Parallel(n_jobs=cfg.n_jobs, prefer="processes")(
        delayed(_score_node)(features[node], labels, folds, cfg, balance) for node in nodes
    )
    return [
        NodeScore(node, depths[node], int(features[node].shape[1]), float(np.mean(s)),
                  float(np.std(s)), tuple(s))
        for node, s in zip(nodes, results, strict=True)
    ]


def choose_finetune_node(scores: Sequence[NodeScore]) -> NodeScore:
    """Best mean F1; ties go to the shallower node."""
    return sorted(scores, key=lambda s: (-round(s.f1_mean, 12), s.depth))[0]
