"""DnCNN: the residual design, and that brief training removes synthetic Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cad.backbones.dncnn import DnCNN, denoise, train_dncnn
from cad.errors import CadError, DataError


def smooth_images(n: int, seed: int, size: int = 24) -> np.ndarray:
    """Low-frequency patterns in [0, 1]: easy to tell apart from white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b, c, d = rng.uniform(0.5, 3.0, (4, n, 1, 1))
    images = 0.5 + 0.25 * np.sin(2 * np.pi * (a * xx + b * yy))
    images += 0.2 * np.cos(2 * np.pi * (c * xx - d * yy))
    return images[:, None].astype(np.float32)


def test_dncnn_design() -> None:
    model = DnCNN(in_chans=1, depth=17, features=64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 17 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 15
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in model.modules())
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), x - model.noise(x))
    torch.testing.assert_close(model(x), x)  # starts as the identity


def test_brief_training_reduces_noise_on_held_out_images() -> None:
    sigma = 0.1
    images = smooth_images(32, seed=0)
    model = train_dncnn(images, sigma, 8, 4, seed=0, depth=4, features=16, lr=3e-3)
    clean = smooth_images(8, seed=1)
    noisy = clean + np.random.default_rng(2).normal(0, sigma, clean.shape).astype(np.float32)
    restored = denoise(model, noisy)
    assert restored.shape == clean.shape and restored.dtype == np.float32
    noisy_mse = float(np.mean((noisy - clean) ** 2))
    restored_mse = float(np.mean((restored - clean) ** 2))
    assert restored_mse < 0.5 * noisy_mse, (restored_mse, noisy_mse)


def test_training_is_deterministic_for_a_seed() -> None:
    images = smooth_images(8, seed=3, size=12)
    first, second = (
        train_dncnn(images, 0.1, epochs=1, batch_size=4, seed=5, depth=3, features=8)
        for _ in range(2)
    )
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_parameter_and_data_errors() -> None:
    images = smooth_images(4, seed=0, size=8)
    with pytest.raises(CadError, match="'sigma' parameter of train_dncnn must be a float"):
        train_dncnn(images, -1.0)
    with pytest.raises(CadError, match="'epochs' parameter"):
        train_dncnn(images, 0.1, epochs=0)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        train_dncnn(images[0], 0.1)
    with pytest.raises(DataError, match="channel"):
        denoise(DnCNN(in_chans=3, depth=3, features=4), images)
