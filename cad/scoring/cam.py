"""Grad-CAM heat maps at the model's connection node, saved as PNG overlays.

MONAI's GradCAM hooks a named ``nn.Module``; the connection node is a torch.fx graph node
(often a functional ``add`` or ``relu`` inside a block), not necessarily a module output.
``TransferModel`` already returns that tensor from ``features(x)`` and scores it with
``head(features)``, so the gradient is taken directly with respect to it (a few lines,
and the body below the node needs no backward pass at all).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cad.finetune.model import TransferModel

log = logging.getLogger("cad.scoring")


def grad_cam(model: TransferModel, images: torch.Tensor, target: int = 1) -> np.ndarray | None:
    """(N, H, W) maps in [0, 1] for class ``target``; None when the node is not spatial."""
    model.eval()
    with torch.no_grad():
        features = model.features(images).float()
    if features.dim() != 4:
        return None
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(features)
        (grads,) = torch.autograd.grad(logits[:, target].sum(), features)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[:, 0].detach()
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu().numpy()


def save_overlay(path: Path, image: np.ndarray, cam: np.ndarray, title: str) -> None:
    """Write ``image`` (H, W) in gray with ``cam`` (H, W) in colour on top, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    low, high = np.percentile(image, (1, 99))
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)


class CamWriter:
    """Overlays for slices at or above the threshold, named by their slice pseudonym."""

    def __init__(self, model: TransferModel, directory: Path, device: torch.device) -> None:
        self.model = model
        self.directory = directory
        self.device = device
        self.written = 0
        self.enabled = True  # off once the connection node turns out not to be spatial
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, images: np.ndarray, samples: list[str], probs: np.ndarray) -> None:
        """``images`` (N, C, H, W) of positive slices with their keys and probabilities."""
        if len(images) == 0 or not self.enabled:
            return
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        cams = grad_cam(self.model, batch)
        if cams is None:
            log.warning("--cam: the connection node has no spatial map; no heat maps written")
            self.enabled = False
            return
        for image, cam, sample, prob in zip(images, cams, samples, probs, strict=True):
            save_overlay(
                self.directory / f"{sample}.png", image[0], cam, f"{sample}  p={float(prob):.3f}"
            )
            self.written += 1
