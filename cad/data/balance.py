"""Class balancing with imbalanced-learn, on sample indices (images are never copied here)."""

from __future__ import annotations

import numpy as np
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import RandomUnderSampler

from cad.config import BalanceConfig


def make_sampler(cfg: BalanceConfig, seed: int | None = None):
    """The imbalanced-learn sampler for ``cfg`` (None for method 'none')."""
    seed = cfg.seed if seed is None else seed
    if cfg.method == "none":
        return None
    if cfg.method == "over":
        return RandomOverSampler(sampling_strategy=cfg.ratio, random_state=seed)
    if cfg.method == "under":
        return RandomUnderSampler(sampling_strategy=cfg.ratio, random_state=seed)
    # combined: oversample the minority half way, then undersample the majority to `ratio`
    return Pipeline(
        [
            ("over", RandomOverSampler(sampling_strategy=cfg.ratio / 2, random_state=seed)),
            ("under", RandomUnderSampler(sampling_strategy=cfg.ratio, random_state=seed)),
        ]
    )


def resample_indices(labels: np.ndarray, cfg: BalanceConfig) -> np.ndarray:
    """Indices into ``labels`` after resampling (repeats for over-, drops for undersampling)."""
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    sampler = make_sampler(cfg)
    if sampler is None or len(np.unique(labels)) < 2:
        return index
    minority = np.bincount(labels).min() / np.bincount(labels).max()
    if minority >= cfg.ratio:  # already at least as balanced as asked
        return index
    resampled, _ = sampler.fit_resample(index.reshape(-1, 1), labels)
    return np.sort(resampled.ravel())
