"""Device and numeric-precision choices: CUDA with AMP when present, else CPU with bf16.

On CPUs with AVX-512 BF16 (or AMX) autocast to bfloat16 roughly doubles convolution
throughput; elsewhere the CPU path stays fp32. ``precision`` in the config can force
either. Process-wide tuning (the heap, :mod:`cad.heap`) is not done here but at the CLI's
entry points and in worker initialisers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool

    @property
    def uses_grad_scaler(self) -> bool:
        return self.device.type == "cuda" and self.amp_dtype == torch.float16

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
            yield

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        if self.channels_last:  # per layer: 3-D convolutions (HybridSN) take the 3-D layout
            for layer in module.modules():
                ranks = {p.dim() for p in layer.parameters(recurse=False)}
                if 5 in ranks:
                    layer.to(memory_format=torch.channels_last_3d)
                elif 4 in ranks:
                    layer.to(memory_format=torch.channels_last)
        return module

    def batch(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Zero the gradients, backpropagate ``loss`` and step (through ``scaler`` for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def cpu_supports_bf16() -> bool:
    from cad.cpu import cpu_info

    return cpu_info().bf16


def select_runtime(precision: str = "auto", channels_last: bool = True) -> Runtime:
    """Pick device and autocast dtype. precision: auto | bf16 | fp32."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        if precision == "fp32":
            dtype = None
        elif torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
        return Runtime(device, dtype, channels_last)
    device = torch.device("cpu")
    if precision == "fp32" or (precision == "auto" and not cpu_supports_bf16()):
        return Runtime(device, None, channels_last)
    return Runtime(device, torch.bfloat16, channels_last)


def describe(runtime: Runtime) -> str:
    dtype = "fp32" if runtime.amp_dtype is None else str(runtime.amp_dtype).removeprefix("torch.")
    layout = ", channels_last" if runtime.channels_last else ""
    return f"{runtime.device.type} ({dtype} autocast{layout})"


def resolved_precision(precision: str = "auto") -> str:
    """What ``precision`` means on this machine, e.g. ``cpu-bf16`` or ``cuda-fp16``: part
    of a stage's identity, so that a workdir shared by different machines never mixes
    artifacts computed at different precisions under one key."""
    runtime = select_runtime(precision)
    dtype = "fp32" if runtime.amp_dtype is None else str(runtime.amp_dtype).removeprefix("torch.")
    return f"{runtime.device.type}-{dtype.replace('bfloat16', 'bf16').replace('float16', 'fp16')}"


def distributed_backend() -> str:
    """The torch.distributed backend for data-parallel training on the device that
    :func:`select_runtime` picks: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def on_local_rank(runtime: Runtime, local_rank: int) -> Runtime:
    """``runtime`` pinned to this rank's GPU (``cuda:LOCAL_RANK``); the CPU is shared."""
    if runtime.device.type != "cuda":
        return runtime
    return Runtime(torch.device("cuda", local_rank), runtime.amp_dtype, runtime.channels_last)
