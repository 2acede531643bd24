"""DnCNN (Zhang et al. 2017), a residual Gaussian denoiser: an optional preprocessing stage.

Not a classifier, hence not in the backbone registry. The network predicts the noise and
subtracts it from its input (residual learning); batch norm and residual learning
together make a deep plain network train fast.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from cad.errors import CadError, DataError


class DnCNN(nn.Module):
    """conv+ReLU, (conv+BN+ReLU) x (depth - 2), conv; 3x3 kernels, no pooling.

    ``forward`` returns the denoised image ``x - noise(x)``.
    """

    def __init__(self, in_chans: int = 1, depth: int = 17, features: int = 64) -> None:
        super().__init__()
        if depth < 3:
            raise CadError(f"The 'depth' parameter of DnCNN must be >= 3. Got {depth} instead.")
        self.in_chans = in_chans
        layers: list[nn.Module] = [nn.Conv2d(in_chans, features, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(),
            ]
        last = nn.Conv2d(features, in_chans, 3, padding=1)
        nn.init.zeros_(last.weight)  # start as the identity: training only removes noise
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted noise (the residual)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.size == 0:
        shape = getattr(images, "shape", type(images).__name__)
        raise DataError(f"{what} needs a non-empty (N, C, H, W) array, got {shape}")
    if not np.isfinite(images).all():
        raise DataError(f"{what}: images contain NaN or infinite values")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_positive(name: str, value: object, integer: bool) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
        raise CadError(
            f"The '{name}' parameter of train_dncnn must be {'an int' if integer else 'a float'}"
            f" in the range (0, inf). Got {value!r} instead."
        )


def train_dncnn(
    images: np.ndarray,
    sigma: float,
    epochs: int = 20,
    batch_size: int = 16,
    seed: int = 0,
    *,
    depth: int = 17,
    features: int = 64,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
) -> DnCNN:
    """Train a DnCNN on clean ``images`` (N, C, H, W) with fresh Gaussian noise each epoch.

    ``sigma`` is the noise standard deviation in image units. The loss is the MSE
    between predicted and true noise (the paper's residual loss); optimiser Adam.
    Deterministic for a given ``seed``; returns the model in eval mode on the CPU.
    """
    clean = torch.from_numpy(_check_images(images, "train_dncnn"))
    _check_positive("sigma", sigma, integer=False)
    _check_positive("epochs", epochs, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DnCNN(in_chans=clean.shape[1], depth=depth, features=features)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(clean), generator=generator)
        for start in range(0, len(clean), batch_size):
            batch = clean[order[start : start + batch_size]]
            noise = torch.randn(batch.shape, generator=generator) * sigma
            batch, noise = batch.to(device), noise.to(device)
            loss = nn.functional.mse_loss(model.noise(batch + noise), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.cpu().eval()


@torch.no_grad()
def denoise(model: DnCNN, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Denoise (N, C, H, W) float images with a trained DnCNN; returns float32, same shape."""
    array = _check_images(images, "denoise")
    if array.shape[1] != model.in_chans:
        raise DataError(
            f"denoise: the DnCNN was trained on {model.in_chans} channel(s), "
            f"the images have {array.shape[1]}"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [
            model(torch.from_numpy(array[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(array), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32, copy=False)
