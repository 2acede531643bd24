"""Extract globally pooled features at every candidate node in one forward pass per batch.

``torchvision.models.feature_extraction.create_feature_extractor`` returns all requested
intermediates of a traced graph at once, so no layer is ever re-forwarded per node.

The traced graph is frozen for inference once per stage (:mod:`cad.frozen`: BatchNorm
folded, weights cast to bf16 once instead of autocast re-casting them every batch).

For large extractions the frozen module also goes through ``torch.compile`` (inductor with
``freezing``: weights become constants and conv + ReLU / add fuse into one kernel), fed
fixed-size batches so it compiles once. ``compile="auto"`` decides from the forward FLOPs
(:func:`should_compile`), counted once, against limits that depend on the precision the
run resolved to and the CPU class (:func:`compile_limits`), so the decision (and therefore
the features) never depends on timing.

``quantize="int8"`` runs the frozen fp32 module as int8 instead (:mod:`cad.quantize`,
calibrated on the first images of the set being extracted, which are training images),
the fast path where bf16 is missing; it is eager, so it never compiles.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor

from cad.cpu import CpuInfo
from cad.device import Runtime
from cad.finetune.model import Normalize
from cad.frozen import frozen_inference_copy

log = logging.getLogger("cad.features")


def pool(tensor: torch.Tensor, modes: Sequence[str], grid: Sequence[int] = (1,)) -> torch.Tensor:
    """Average and/or max pooling per channel: over the whole map for level 1, and over
    ``g x g`` cells of a 2-D map for each further level ``g`` of ``grid`` (spatial pyramid
    pooling, He et al. 2014). Globally pooled features cannot say where a response lies
    (a focal enhancement in the breast or the heart's in the thorax); a level-2 pyramid
    says in which quadrant. Maps of other ranks are pooled globally only."""
    if tensor.dim() <= 2:
        return tensor.float()
    x = tensor.float()
    parts = []
    for level in grid:
        if level == 1:
            flat = x.flatten(2)
            parts += [flat.mean(dim=2) if mode == "avg" else flat.amax(dim=2) for mode in modes]
        elif x.dim() == 4:
            for mode in modes:
                cell = (
                    F.adaptive_avg_pool2d(x, level)
                    if mode == "avg"
                    else F.adaptive_max_pool2d(x, level)
                )
                parts.append(cell.flatten(1))
    return torch.cat(parts, dim=1)


def multi_node_extractor(model: nn.Module, nodes: Sequence[str]) -> torch.fx.GraphModule:
    """A graph module returning ``{node: tensor}`` for every node, traced in eval mode."""
    model.eval()
    extractor = create_feature_extractor(
        model, return_nodes={n: n for n in nodes}, suppress_diff_warning=True
    )
    return extractor.eval()


def inference_module(
    extractor: torch.fx.GraphModule, normalize: nn.Module, runtime: Runtime
) -> tuple[nn.Module, bool]:
    """A frozen copy of ``normalize`` + ``extractor`` taking fp32 input; and whether it
    still needs autocast (:func:`cad.frozen.frozen_inference_copy`)."""
    return frozen_inference_copy(normalize, extractor, runtime)


def forward_tflop(
    module: nn.Module, image_shape: Sequence[int], count: int, runtime: Runtime, autocast: Callable
) -> float:
    """Forward TFLOP (2 per multiply-add) of ``count`` images through ``module``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, autocast():
        module(runtime.batch(torch.zeros(1, *image_shape)))
    return counter.get_total_flops() * count / 1e12


class CompiledOrEager:
    """``torch.compile(module)``, falling back to the eager module (with one warning) when
    compilation fails, e.g. without a C++ compiler."""

    def __init__(self, module: nn.Module) -> None:
        self.eager = module
        # Every extractor is a new module running the same forward code, so dynamo would
        # stack guarded entries until its recompile limit and then silently run eager: start
        # from an empty cache (inductor's on-disk cache still makes a recompile cheap).
        torch.compiler.reset()
        self.compiled: Callable | None = torch.compile(module, dynamic=False)

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.compiled is not None:
            try:
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    return self.compiled(batch)
            except Exception as exc:  # any compile failure: the eager module gives the same maths
                log.warning("torch.compile failed (%s); extracting without it", type(exc).__name__)
                self.compiled = None
        return self.eager(batch)


@dataclass(frozen=True)
class CompileLimits:
    """When ``compile: auto`` compiles: the whole extraction's forward work at least
    ``min_tflop`` (so the one-off compile pays for itself) and one image below
    ``max_gflop_per_image`` (small inputs, where per-op overhead is what compiling removes)."""

    min_tflop: float
    max_gflop_per_image: float
    basis: str  # which measurement the figures come from


# Measured with benchmarks/bench_extract.py --variants compile (README "Speed"):
# bf16 (avx512-bf16, native): at 80 px compiling gained 1.1-2.6x, at 224 px (8-31 GFLOP per
# image) eager ran at 55-87% of the limit and compiling gained nothing or lost 30%; a compile
# takes 5-25 s, about 20 TFLOP of eager bf16 work.
BF16_LIMITS = CompileLimits(20.0, 6.0, "bf16 on avx512-bf16 (native), 2026-12-02")


def break_even_tflop(compile_s: float, eager_gflops: float, compiled_gflops: float) -> float:
    """Forward TFLOP from which a compile of ``compile_s`` seconds is repaid."""
    return compile_s / (1 / eager_gflops - 1 / compiled_gflops) / 1e3


# fp32 (AVX2 emulated on Zen 4, 80 px, under load): InceptionV3 (0.42 GFLOP/image) gained
# 2.9-4.8x (3.2x in CPU time), ResNet50 (1.12) 0.8-1.1x, VGG16 (4.15) none. InceptionV3's
# cold compile took 53 s, eager ran at 30 GFLOP/s and compiled at 73: repaid from 2.7 TFLOP.
FP32_LIMITS = CompileLimits(
    round(break_even_tflop(53.0, 30.0, 73.0), 1),
    1.0,
    "fp32 on avx2 (emulated on Zen 4), 2026-12-03",
)


def compile_limits(runtime: Runtime, cpu: CpuInfo) -> CompileLimits:
    """The limits for the precision ``runtime`` resolved to on ``cpu``: bf16 limits only
    where bf16 is native (AVX-512 BF16 or AMX; AMX is not measured and takes the
    AVX-512 BF16 figures), the fp32 limits everywhere else (AVX2, AVX-512 without bf16,
    and ``precision: fp32`` on any CPU). A GPU never reaches here with ``auto``."""
    if runtime.amp_dtype == torch.bfloat16 and cpu.bf16:
        return BF16_LIMITS
    return FP32_LIMITS


def should_compile(
    setting: str,
    tflop_per_image: Callable[[], float],
    images: int,
    min_tflop: float,
    max_gflop_per_image: float,
) -> bool:
    """``auto``: compile when the whole extraction is big enough to repay the one-off compile
    and one image is small enough for inductor's fusion to beat eager oneDNN kernels (the
    limits per precision and CPU class: :func:`compile_limits`)."""
    if setting == "off":
        return False
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        if setting == "on":
            log.warning("extract.compile: on needs a C compiler (cc/gcc) on PATH; running eager")
        return False
    if setting == "on":
        return True
    per_image = tflop_per_image()
    return per_image * images >= min_tflop and per_image * 1e3 < max_gflop_per_image


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
    compile: str = "off",
    grid: Sequence[int] = (1,),
    compile_min_tflop: float | None = None,
    compile_max_gflop_per_image: float | None = None,
    quantize: str = "off",
) -> dict[str, np.ndarray]:
    """Pooled features ``{node: (N, D) float32}`` for ``images`` (N, C, H, W) float32.

    ``compile_min_tflop`` / ``compile_max_gflop_per_image`` left at None take
    :func:`compile_limits` for this runtime and CPU. ``quantize="int8"`` needs a CPU
    runtime and ignores its bf16 setting (the int8 copy is made from the fp32 module)."""
    from cad.cpu import cpu_info

    reduce = functools.partial(pool, modes=tuple(pooling), grid=tuple(grid))
    if quantize == "int8":
        return _extract_int8(model, nodes, images, normalize, runtime, batch_size, reduce, progress)
    limits = compile_limits(runtime, cpu_info())
    extractor, needs_autocast = inference_module(
        multi_node_extractor(model, nodes), normalize, runtime
    )
    autocast = runtime.autocast if needs_autocast else contextlib.nullcontext
    forward: Callable = extractor
    pad = should_compile(
        compile,
        lambda: forward_tflop(extractor, images.shape[1:], 1, runtime, autocast),
        len(images),
        limits.min_tflop if compile_min_tflop is None else compile_min_tflop,
        limits.max_gflop_per_image
        if compile_max_gflop_per_image is None
        else compile_max_gflop_per_image,
    )
    log.debug("compile %s: limits %s", "yes" if pad else "no", limits)
    if pad:
        log.info("compiling the extractor (torch.compile, one-off)")
        forward = CompiledOrEager(extractor)
    return _run_batches(
        forward, nodes, images, runtime, batch_size, reduce, progress, pad, autocast
    )


def _run_batches(
    forward: Callable,
    nodes: Sequence[str],
    images: np.ndarray,
    runtime: Runtime,
    batch_size: int,
    reduce: Callable[[torch.Tensor], torch.Tensor],  # a node's map -> (N, D) features
    progress: Callable[[int], None] | None,
    pad: bool = False,
    autocast: Callable = contextlib.nullcontext,
) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {node: [] for node in nodes}
    for start in range(0, len(images), batch_size):
        chunk = np.array(images[start : start + batch_size], dtype=np.float32)  # writable copy
        real = len(chunk)
        if pad and real < batch_size:  # one batch shape: the compiled graph is reused
            chunk = np.concatenate(
                [chunk, np.zeros((batch_size - real, *chunk.shape[1:]), dtype=np.float32)]
            )
        batch = runtime.batch(torch.from_numpy(chunk))
        with autocast():
            features = forward(batch)
        for node in nodes:
            out[node].append(reduce(features[node][:real]).cpu().numpy())
        if progress:
            progress(real)
    return {node: np.concatenate(parts) for node, parts in out.items()}


def _extract_int8(
    model: nn.Module,
    nodes: Sequence[str],
    images: np.ndarray,
    normalize: Normalize,
    runtime: Runtime,
    batch_size: int,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    progress: Callable[[int], None] | None,
) -> dict[str, np.ndarray]:
    from cad.quantize import calibration_batches, quantize_int8

    if runtime.device.type != "cpu":
        from cad.errors import ConfigError

        raise ConfigError(
            f"extract.quantize: int8 is a CPU path and this machine runs on "
            f"{runtime.device.type}; set extract.quantize: off (the GPU runs bf16/fp16)"
        )
    fp32 = Runtime(runtime.device, None, runtime.channels_last)
    extractor, _ = inference_module(multi_node_extractor(model, nodes), normalize, fp32)
    calibration = calibration_batches(images, fp32.batch, batch_size)
    used = sum(len(batch) for batch in calibration)
    log.info("quantizing the extractor to int8 (calibrated on %d training images)", used)
    return _run_batches(
        quantize_int8(extractor, calibration), nodes, images, fp32, batch_size, reduce, progress
    )
