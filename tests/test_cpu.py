"""CPU capability detection: one record, and an AVX2-only machine resolves to fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from cad.cpu import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def _doctor(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "cad.cli", "doctor", "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_the_record_matches_what_torch_dispatches_to():
    info = cpu_info()
    assert info.isa == torch.backends.cpu.get_cpu_capability()
    assert info.cores >= 1
    assert not info.bf16 or info.isa.startswith("AVX512")
    assert info.cpu_class == "amx" if info.amx else info.cpu_class.startswith(info.isa.lower())
    assert set(info.as_dict()) >= {"model", "isa", "bf16", "amx", "vnni", "cores", "cpu_class"}


def test_an_avx2_only_machine_gets_fp32_and_says_so():
    """ATEN_CPU_CAPABILITY=avx2 makes torch dispatch as on an AVX2-only CPU: cad must then
    neither claim bf16 nor choose it."""
    report = _doctor(ATEN_CPU_CAPABILITY="avx2")
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT",):  # cannot emulate upwards
        return
    assert report["cpu"]["isa"] == "AVX2"
    assert report["cpu"]["cpu_class"] == "avx2"
    assert report["cpu"]["bf16"] is False and report["cpu"]["amx"] is False
    if not torch.cuda.is_available():
        assert report["precision_auto"] == "cpu-fp32"


def test_doctor_reports_this_machine():
    report = _doctor()
    assert report["cpu"]["isa"] == cpu_info().isa
    if not torch.cuda.is_available():
        assert report["precision_auto"] == ("cpu-bf16" if cpu_info().bf16 else "cpu-fp32")


def test_an_emulated_class_says_so_in_its_label():
    from cad.cpu import CpuInfo

    emulated = CpuInfo("EPYC", 2, "AVX2", False, False, False, ("avx2", "avx512f"), "AVX2")
    assert emulated.emulated and emulated.cpu_class == "avx2"
    assert "emulated" in emulated.label and "ONEDNN_MAX_CPU_ISA=AVX2" in emulated.label
    unset = CpuInfo("EPYC", 2, "AVX2", False, False, False, ("avx2", "avx512f"))
    assert "still use AVX-512" in unset.label  # oneDNN not capped: the figure is not AVX2's
    native = CpuInfo("Core", 4, "AVX2", False, False, False, ("avx2",))
    assert not native.emulated and native.label == "avx2 (native)"
    assert native.as_dict()["label"] == "avx2 (native)"


def test_doctor_labels_an_emulated_class():
    report = _doctor(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    if "avx512f" not in cpu_info().flags:  # nothing wider to emulate on
        return
    assert report["cpu"]["emulated"] is True
    assert report["cpu"]["vnni"] is False  # oneDNN's AVX2 cap leaves out AVX-VNNI too
    assert (
        "emulated" in report["cpu"]["label"] and "ONEDNN_MAX_CPU_ISA=AVX2" in report["cpu"]["label"]
    )
