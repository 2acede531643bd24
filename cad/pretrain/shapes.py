"""The procedural source task: many classes of rendered shapes on textured backgrounds.

Formula-driven supervised pretraining (Kataoka et al., "Pre-training without Natural
Images", ACCV 2020; Baradad et al., "Learning to See by Looking at Noise", NeurIPS 2021)
teaches a network edges, blobs, rims, lines and textures from images a formula draws, so it
needs no download and sees no patient. A class is one (shape, size, channel signature)
triple; every image holds one object of its class on a smooth random background with
distractor texture. Batches are drawn in torch on the fly from a seeded generator, so the
source is infinite, costs no disk and is the same on every machine.

No library renders such a class-labelled shape source in batches on tensors (torchvision's
``FakeData`` is noise; FractalDB needs its own renderer and files), hence this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SHAPES = ("disk", "ellipse", "lobulated", "spiculated", "ring", "bar", "dots", "square")
SIZES = (0.07, 0.16)  # object radius as a fraction of the image side
SIGNATURES = 5  # channel signatures per (shape, size)
VERSION = "shapes-1"  # bump when the rendering changes: it is part of the cache key


@dataclass(frozen=True)
class ShapeSource:
    """The class set for ``channels``-channel images; ``classes`` = shapes x sizes x signatures."""

    channels: int
    signature_seed: int = 0

    @property
    def classes(self) -> int:
        return len(SHAPES) * len(SIZES) * SIGNATURES

    def signatures(self) -> torch.Tensor:
        """(SIGNATURES, channels) per-channel contrast of the object, each row distinct."""
        g = torch.Generator().manual_seed(self.signature_seed)
        rows = torch.rand(SIGNATURES, self.channels, generator=g) * 1.6 - 0.6
        rows[0] = 0.8  # one bright-everywhere signature
        return rows

    def batch(self, n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (n, channels, size, size) in about [0, 1] and their class labels."""
        labels = torch.randint(self.classes, (n,), generator=g)
        shape = labels // (len(SIZES) * SIGNATURES)
        size_index = (labels // SIGNATURES) % len(SIZES)
        signature = self.signatures()[labels % SIGNATURES]  # (n, C)
        images = _background(n, self.channels, size, g)
        mask = _masks(shape, torch.tensor(SIZES)[size_index], size, g)  # (n, size, size)
        images = images + mask[:, None] * signature[:, :, None, None]
        images = images + 0.03 * torch.randn(images.shape, generator=g)
        return images.clamp_(-0.5, 1.5), labels


def _rand(n: int, g: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _background(n: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Smooth random fields at two scales, shared structure across channels."""
    out = torch.zeros(n, channels, size, size)
    for cells, weight in ((4, 0.35), (12, 0.15)):
        base = torch.rand(n, 1, cells, cells, generator=g)
        own = torch.rand(n, channels, cells, cells, generator=g)
        field = 0.7 * base + 0.3 * own
        out += weight * torch.nn.functional.interpolate(
            field, size=(size, size), mode="bicubic", align_corners=False
        )
    return out + 0.1 * torch.rand(n, channels, 1, 1, generator=g)


def _masks(shape: torch.Tensor, radius: torch.Tensor, size: int, g: torch.Generator):
    """Soft (n, size, size) masks in [0, 1] of each sample's shape, at random pose."""
    n = len(shape)
    radius = radius * _rand(n, g, 0.8, 1.25)
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    cx = _rand(n, g, -0.55, 0.55)[:, None, None]
    cy = _rand(n, g, -0.55, 0.55)[:, None, None]
    angle = _rand(n, g, 0, 2 * math.pi)[:, None, None]
    dx, dy = xx - cx, yy - cy
    u = dx * torch.cos(angle) + dy * torch.sin(angle)
    v = -dx * torch.sin(angle) + dy * torch.cos(angle)
    r = radius[:, None, None] * 2  # radius in [-1, 1] coordinates
    rho = torch.sqrt(u**2 + v**2) + 1e-6
    theta = torch.atan2(v, u)
    edge = 2.0 / size  # one pixel of softness
    lobes = torch.randint(3, 6, (n,), generator=g)[:, None, None]
    spikes = torch.randint(7, 13, (n,), generator=g)[:, None, None]
    distance = {
        "disk": rho - r,
        "ellipse": torch.sqrt((u / 1.0) ** 2 + (v / 0.45) ** 2) - r,
        "lobulated": rho - r * (1 + 0.25 * torch.cos(lobes * theta)),
        "spiculated": rho - r * (0.6 + 0.6 * torch.cos(spikes * theta).clamp(min=0) ** 4),
        "ring": (rho - r).abs() - r * 0.22,
        "bar": torch.maximum(u.abs() - 1.6 * r, v.abs() - 0.2 * r),
        "dots": _dots(u, v, r),
        "square": torch.maximum(u.abs(), v.abs()) - 0.85 * r,
    }
    stacked = torch.stack([distance[s] for s in SHAPES])  # (shapes, n, size, size)
    chosen = stacked[shape, torch.arange(n)]
    return torch.sigmoid(-chosen / edge)


def _dots(u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Three small disks on a triangle of radius ``r``."""
    out = None
    for k in range(3):
        a = 2 * math.pi * k / 3
        d = torch.sqrt((u - r * math.cos(a)) ** 2 + (v - r * math.sin(a)) ** 2) - 0.35 * r
        out = d if out is None else torch.minimum(out, d)
    assert out is not None
    return out
