"""Frozen inference copies of a traced network: BatchNorm folded, weights cast once.

Used wherever a network only runs forward (feature extraction, evaluation, scoring). Every
eval-mode BatchNorm is folded into the convolution before it (``torch.fx`` ``fuse``), and
under bf16 the copy itself is cast to bfloat16 instead of running under autocast, which
would re-cast every weight on every batch (VGG16's 120M fc weights dominate that cost).
bf16 has fp32's range, so this is as safe as autocast; fp16 keeps autocast, which holds
range-sensitive ops in fp32. The original module is never modified.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from cad.device import Runtime


class Cast(nn.Module):
    """Casts its input to ``dtype`` (the boundary between fp32 data and a bf16 network)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class Select(nn.Module):
    """Picks one output of a graph module that returns a dict."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs[self.key]


def frozen_inference_copy(
    normalize: nn.Module, graph: fx.GraphModule, runtime: Runtime, *after: nn.Module
) -> tuple[nn.Module, bool]:
    """``normalize -> graph (BN folded) -> after...`` as a new eval-mode module taking fp32
    input, prepared for ``runtime``; and whether it still needs ``runtime.autocast``."""
    normalize = copy.deepcopy(normalize)
    folded = fuse(copy.deepcopy(graph).eval(), inplace=True, no_trace=True)
    tail = [copy.deepcopy(module).eval() for module in after]
    if runtime.amp_dtype == torch.bfloat16:
        parts = [folded.to(torch.bfloat16), *(m.to(torch.bfloat16) for m in tail)]
        module = nn.Sequential(normalize, Cast(torch.bfloat16), *parts)
        return runtime.prepare(module).eval(), False
    return runtime.prepare(nn.Sequential(normalize, folded, *tail)).eval(), True
