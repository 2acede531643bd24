"""Extract globally pooled features at every candidate node in one forward pass per batch.

``torchvision.models.feature_extraction.create_feature_extractor`` returns all requested
intermediates of a traced graph at once, so no layer is ever re-forwarded per node.

The traced graph is frozen for inference once per stage (:func:`inference_module`): every
eval-mode BatchNorm is folded into the convolution before it (``torch.fx`` ``fuse``), and
under bf16 the module itself is cast to bfloat16 instead of running under autocast, which
would re-cast every weight on every batch (VGG16's 120M fc weights dominate that cost).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchvision.models.feature_extraction import create_feature_extractor

from cad.device import Runtime
from cad.finetune.model import Normalize


def node_file(node: str) -> str:
    """File name of a node's feature matrix (node names contain dots)."""
    return f"{node.replace('/', '_')}.npy"


def pool(tensor: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Global average (and/or max) pooling over every axis after the channel axis."""
    if tensor.dim() <= 2:
        return tensor.float()
    flat = tensor.float().flatten(2)
    parts = [flat.mean(dim=2) if mode == "avg" else flat.amax(dim=2) for mode in modes]
    return torch.cat(parts, dim=1)


def multi_node_extractor(model: nn.Module, nodes: Sequence[str]) -> nn.Module:
    """A graph module returning ``{node: tensor}`` for every node, traced in eval mode."""
    model.eval()
    extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    return extractor.eval()


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def inference_module(
    extractor: torch.fx.GraphModule, normalize: nn.Module, runtime: Runtime
) -> tuple[nn.Module, bool]:
    """A frozen copy of ``normalize`` + ``extractor`` taking fp32 input; and whether it
    still needs autocast.

    The copy leaves the backbone's own parameters untouched. bf16 casts the weights once
    (bf16 has fp32's range, so this is as safe as autocast) after fp32 normalization; fp16
    keeps autocast, which holds range-sensitive ops in fp32.
    """
    frozen = fuse(copy.deepcopy(extractor).eval(), inplace=True, no_trace=True)
    if runtime.amp_dtype == torch.bfloat16:
        module = nn.Sequential(normalize, _Cast(torch.bfloat16), frozen.to(torch.bfloat16))
        return runtime.prepare(module).eval(), False
    return runtime.prepare(nn.Sequential(normalize, frozen)).eval(), True


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    nodes: Sequence[str],
    images: np.ndarray,
    normalize: Normalize,
    runtime: Runtime,
    batch_size: int = 32,
    pooling: Sequence[str] = ("avg",),
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Pooled features ``{node: (N, D) float32}`` for ``images`` (N, C, H, W) float32."""
    extractor, needs_autocast = inference_module(
        multi_node_extractor(model, nodes), normalize, runtime
    )
    autocast = runtime.autocast if needs_autocast else contextlib.nullcontext
    out: dict[str, list[np.ndarray]] = {node: [] for node in nodes}
    for start in range(0, len(images), batch_size):
        chunk = np.array(images[start : start + batch_size], dtype=np.float32)  # writable copy
        batch = runtime.batch(torch.from_numpy(chunk))
        with autocast():
            features = extractor(batch)
        for node in nodes:
            out[node].append(pool(features[node], pooling).cpu().numpy())
        if progress:
            progress(len(batch))
    return {node: np.concatenate(parts) for node, parts in out.items()}


def save_features(features: dict[str, np.ndarray], directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for node, matrix in features.items():
        np.save(directory / node_file(node), matrix.astype(np.float32))
        files[node] = node_file(node)
    return files


def load_features(directory: Path, nodes: Sequence[str]) -> dict[str, np.ndarray]:
    return {node: np.load(directory / node_file(node), mmap_mode="r") for node in nodes}
