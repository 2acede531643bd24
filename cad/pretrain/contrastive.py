"""Self-supervised pretraining on the training patients' unlabeled slices (SimCLR).

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
(ICML 2020): two random views of each slice must find each other among the batch's other
views (NT-Xent loss on a projection of the backbone's output); the projection head is
used only here. Azizi et al., "Big Self-Supervised Models Advance Medical Image
Classification" (ICCV 2021) show such in-domain pretraining helps medical classifiers.

The views are made on tensors, per slice in one batched call: a random crop of 25-100% of
the area with a random aspect ratio, a horizontal flip (``affine_grid`` + ``grid_sample``
resample it to the view size), a gain and offset shared by the channels (the contrast
between phases, which carries the enhancement, is kept) and Gaussian noise. torchvision's
transforms draw one set of parameters per call, so a batch would share one crop; the
affine grid gives each slice its own in one call.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cad.config import ContrastiveConfig

VERSION = "contrastive-1"  # bump when the views or the loss change: part of the cache key
PROJECTION = (512, 128)  # hidden and output width of the projection head


def pooled_output(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's output as (N, D): spatially averaged when it is a map."""
    out = backbone(x)
    out = getattr(out, "logits", out)  # Inception/GoogLeNet outputs in train mode
    return out.flatten(2).mean(2) if out.dim() > 2 else out


class Projected(nn.Module):
    """The backbone's output (spatially averaged when it is a map) through an MLP head."""

    def __init__(self, backbone: nn.Module, in_chans: int, size: int) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            backbone.eval()
            dim = pooled_output(backbone, torch.zeros(2, in_chans, size, size)).shape[1]
        hidden, out = PROJECTION
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_output(self.backbone, x))


class SliceViews:
    """Batches of two random views of slices drawn from ``slices`` (N, C, H, W)."""

    def __init__(self, slices: torch.Tensor, cfg: ContrastiveConfig) -> None:
        if len(slices) < 2:
            raise ValueError("contrastive pretraining needs at least 2 training slices")
        self.slices = slices
        self.cfg = cfg

    @property
    def candidates(self) -> int:
        """Views each anchor chooses its partner from (chance: 1 / candidates)."""
        return 2 * self.cfg.batch_size - 1

    def batch(self, n: int, size: int, g: torch.Generator) -> torch.Tensor:
        """(2n, C, size, size): views 0..n-1 and n..2n-1 are two views of the same n slices."""
        picked = self.slices[torch.randint(len(self.slices), (n,), generator=g)]
        return torch.cat([self._view(picked, size, g), self._view(picked, size, g)])

    def _view(self, x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        area = self.cfg.crop_scale + (1 - self.cfg.crop_scale) * torch.rand(n, generator=g)
        aspect = torch.exp((torch.rand(n, generator=g) - 0.5) * 0.6)  # 3/4 .. 4/3
        sx = (area.sqrt() * aspect.sqrt()).clamp(max=1)
        sy = (area.sqrt() / aspect.sqrt()).clamp(max=1)
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = sx * flip, sy
        theta[:, 0, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
        theta[:, 1, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        out = F.grid_sample(x, grid, align_corners=False)
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.4
        offset = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.2
        return out * gain + offset + 0.03 * torch.randn(out.shape, generator=g)


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, int]:
    """The NT-Xent loss of 2n projections (pairs i and i+n) and how many found their pair."""
    z = F.normalize(z.float(), dim=1)
    n = len(z) // 2
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target), int((sim.argmax(1) == target).sum())
