"""What this machine's CPU can do, detected once: ISA level, bf16, AMX, VNNI, cores.

Benchmarks, ``cad doctor`` and the precision choice read the same record, so a figure
always names the CPU class it came from. The ISA level is PyTorch's own dispatch level
(``torch.backends.cpu.get_cpu_capability``, which honours ``ATEN_CPU_CAPABILITY``); the
feature flags come from ``/proc/cpuinfo`` because PyTorch exposes no VNNI query.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")

# What caps a wider CPU to a narrower class: ATen's dispatch (every torch kernel, and what
# ``precision: auto`` reads), oneDNN's JIT kernels (convolutions, int8 convolutions) and
# fbgemm's (int8 linear layers and some int8 convolutions); each ignores the others' cap.
EMULATION_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    }
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int  # usable by this process (affinity), not the machine's total
    isa: str  # the ATen dispatch level: DEFAULT, AVX2, AVX512 (or an ARM level)
    bf16: bool  # native bf16 matmul (AVX-512 BF16 or AMX)
    amx: bool
    vnni: bool  # int8 dot products (AVX-512 VNNI or AVX-VNNI)
    flags: tuple[str, ...]  # those of FLAGS_OF_INTEREST the CPU reports
    onednn_max_isa: str | None = None  # ONEDNN_MAX_CPU_ISA when set

    @property
    def emulated(self) -> bool:
        """True when the hardware is wider than the dispatch level (``ATEN_CPU_CAPABILITY``
        below what the CPU reports): figures then come from an emulated class."""
        return "avx512f" in self.flags and not self.isa.startswith("AVX512")

    @property
    def cpu_class(self) -> str:
        """A short label for figures: ``avx512-bf16``, ``avx512``, ``avx2``, ..."""
        if self.amx:
            return "amx"
        level = self.isa.lower()
        return f"{level}-bf16" if self.bf16 else level

    @property
    def label(self) -> str:
        """The class with how it was obtained, e.g. ``avx2 (emulated on a CPU with AVX-512:
        ATEN_CPU_CAPABILITY=AVX2, ONEDNN_MAX_CPU_ISA=AVX2)``: what every figure is tagged with."""
        if not self.emulated:
            return f"{self.cpu_class} (native)"
        onednn = self.onednn_max_isa or "unset: oneDNN convolutions still use AVX-512"
        return (
            f"{self.cpu_class} emulated on a CPU with AVX-512 ({self.model}; "
            f"ATEN_CPU_CAPABILITY={self.isa}, ONEDNN_MAX_CPU_ISA={onednn})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "flags": list(self.flags),
            "cpu_class": self.cpu_class,
            "emulated": self.emulated,
            "label": self.label,
        }


def _cpuinfo() -> tuple[str, set[str]]:
    """The model name with its family and model numbers (a VM may report only "AMD EPYC";
    family 25 is Zen 3/4, 26 is Zen 5, which differ in AVX-512 width), and the flags."""
    fields: dict[str, str] = {}
    flags = set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
    except OSError:  # not Linux: the ISA level still comes from torch
        pass
    model = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return model, flags


@functools.cache
def cpu_info() -> CpuInfo:
    model, flags = _cpuinfo()
    isa = torch.backends.cpu.get_cpu_capability()
    wide = isa.startswith("AVX512")  # ATEN_CPU_CAPABILITY=avx2 emulates an AVX2-only machine
    amx = wide and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    bf16 = amx or (wide and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()))
    # oneDNN capped at AVX2 (the emulation) also leaves out AVX-VNNI (its avx2_vnni level)
    capped = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "").upper() in ("SSE41", "AVX", "AVX2")
    vnni = not capped and ((wide and "avx512_vnni" in flags) or "avx_vnni" in flags)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(
        model=model,
        cores=cores or 1,
        isa=isa,
        bf16=bf16,
        amx=amx,
        vnni=vnni,
        flags=tuple(f for f in FLAGS_OF_INTEREST if f in flags),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )
