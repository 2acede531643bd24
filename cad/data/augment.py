"""MONAI augmentation of training slices, offline (fixed copies, as in the paper) or online.

Only the training split is ever augmented. Images are (C, H, W) float32 arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cad.config import AugmentConfig

Augment = Callable[[np.ndarray], np.ndarray]


def make_augment(cfg: AugmentConfig, seed: int | None = None) -> Any:
    """A seeded random MONAI ``Compose`` for (C, H, W) slices."""
    # MONAI's package import costs ~9 s of CPU: only pay it when augmenting
    from monai.transforms import (
        Compose,
        Rand2DElastic,
        RandAffine,
        RandBiasField,
        RandFlip,
        RandGaussianNoise,
        RandGibbsNoise,
        RandShiftIntensity,
    )

    steps = []
    if cfg.flip > 0:
        steps.append(RandFlip(prob=cfg.flip, spatial_axis=1))  # left-right
    if cfg.rotate_deg > 0 or cfg.scale > 0:
        steps.append(
            RandAffine(
                prob=0.8,
                rotate_range=(math.radians(cfg.rotate_deg),),
                scale_range=(cfg.scale, cfg.scale),
                padding_mode="zeros",
            )
        )
    if cfg.elastic > 0:
        steps.append(
            Rand2DElastic(
                prob=cfg.elastic, spacing=(16, 16), magnitude_range=(0.5, 1.5), padding_mode="zeros"
            )
        )
    if cfg.bias_field > 0:
        steps.append(RandBiasField(prob=cfg.bias_field, coeff_range=(0.0, 0.15)))
    if cfg.gibbs > 0:
        steps.append(RandGibbsNoise(prob=cfg.gibbs, alpha=(0.0, 0.4)))
    if cfg.noise > 0:
        steps.append(RandGaussianNoise(prob=cfg.noise, std=0.03))
    if cfg.intensity_shift > 0:
        steps.append(RandShiftIntensity(offsets=cfg.intensity_shift, prob=0.5))
    compose = Compose(steps)
    compose.set_random_state(seed=cfg.seed if seed is None else seed)
    return compose


def apply(transform: Any, image: np.ndarray) -> np.ndarray:
    out = transform(image)
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def augment_offline(
    images: np.ndarray, cfg: AugmentConfig, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Originals followed by ``cfg.copies`` augmented copies of each image.

    Returns (images, source) where ``source[i]`` is the index of the original image.
    Deterministic for a given seed.
    """
    n = len(images)
    copies = cfg.copies if cfg.mode == "offline" else 0
    out = np.empty((n * (1 + copies), *images.shape[1:]), dtype=np.float32)
    out[:n] = images
    transform = make_augment(cfg)
    for copy in range(copies):
        for i in range(n):
            out[n * (copy + 1) + i] = apply(transform, images[i])
            if progress:
                progress(1)
    source = np.tile(np.arange(n), 1 + copies)
    return out, source
