"""int8 post-training quantization of a frozen inference module, for CPUs without bf16.

PyTorch's FX graph-mode flow (``torch.ao.quantization.quantize_fx``) with its ``x86``
backend: weights int8 per output channel, activations int8 per tensor with ranges observed
on calibration batches (histogram observers), run by fbgemm's and oneDNN's int8 kernels
(VNNI where the CPU has it, AVX2 ``vpmaddubsw`` otherwise). Eager, so there is no compile
to repay. The PT2E flow (torchao 0.18's ``X86InductorQuantizer``) was tried first and
fails on torch 2.14's exported torchvision ResNets ("Input partition has more than one
output node", 2026-12-04), so the FX flow it replaces is used while it ships with torch
(torch 2.14 marks quantized tensors deprecated, to be removed in a later release).

The result depends only on the module and the calibration batches (the observers are
deterministic), so the same images on the same machine give the same features.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

ENGINE = "x86"
CALIBRATION_IMAGES = 64  # the first images of the training set; ranges settle by ~32 here


def int8_supported() -> bool:
    """Whether this torch build has the x86 int8 kernels (every x86-64 wheel does)."""
    return ENGINE in torch.backends.quantized.supported_engines


class Quantized(nn.Module):
    """An int8 module whose forward does not repeat the quantized ``cat``'s warning that its
    inputs have different scales (it requantizes them; what that costs is measured, README
    "Speed"), once per concatenation of every network with branches."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*share the same quantization param.*")
            return self.module(x)


def calibration_batches(
    images: np.ndarray, to_input: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> list[torch.Tensor]:
    """The first :data:`CALIBRATION_IMAGES` of ``images`` as input batches (``to_input``:
    e.g. ``Runtime.batch``, so they arrive in the layout the module will see)."""
    head = np.array(images[:CALIBRATION_IMAGES], dtype=np.float32)
    return [
        to_input(torch.from_numpy(head[i : i + batch_size]))
        for i in range(0, len(head), batch_size)
    ]


def quantize_int8(module: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """An int8 copy of the fp32 eval-mode ``module`` calibrated on ``calibration`` batches
    (fed as the module will be fed, e.g. channels_last). ``module`` is not modified."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration:
        raise ValueError("int8 quantization needs at least one calibration batch")
    torch.backends.quantized.engine = ENGINE
    with warnings.catch_warnings():  # the flow's deprecation notices (see the module doc)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=".*(quantiz|reduce_range).*", category=UserWarning
        )
        prepared = prepare_fx(
            copy.deepcopy(module).eval(),
            get_default_qconfig_mapping(ENGINE),
            (calibration[0],),
        )
        with torch.no_grad():  # observers update buffers: not under inference_mode
            for batch in calibration:
                prepared(batch)
        return Quantized(convert_fx(prepared)).eval()
