"""Which extraction path runs on which CPU: the compile decision per precision and class.

Fake CPU records stand for the four classes; nothing is timed, only decided."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cad import cpu as cpu_module
from cad.backbones import get_spec
from cad.cpu import CpuInfo
from cad.device import Runtime, select_runtime
from cad.features import extract
from cad.finetune.model import Normalize

CPU = torch.device("cpu")
FP32 = Runtime(CPU, None, channels_last=True)
BF16 = Runtime(CPU, torch.bfloat16, channels_last=True)


def fake_cpu(cpu_class: str) -> CpuInfo:
    isa = {"avx2": "AVX2"}.get(cpu_class, "AVX512")
    bf16 = cpu_class in ("avx512-bf16", "amx")
    flags = ("avx2",) if cpu_class == "avx2" else ("avx2", "avx512f")
    return CpuInfo("fake", 2, isa, bf16, cpu_class == "amx", bf16, flags)


@pytest.mark.parametrize(
    ("cpu_class", "runtime", "expected"),
    [
        ("avx2", FP32, extract.FP32_LIMITS),
        ("avx512", FP32, extract.FP32_LIMITS),
        ("avx512", BF16, extract.FP32_LIMITS),  # forced bf16 without native bf16
        ("avx512-bf16", BF16, extract.BF16_LIMITS),
        ("avx512-bf16", FP32, extract.FP32_LIMITS),  # precision: fp32 on a bf16 CPU
        ("amx", BF16, extract.BF16_LIMITS),
    ],
)
def test_limits_follow_the_precision_actually_used(cpu_class, runtime, expected) -> None:
    cpu = fake_cpu(cpu_class)
    assert cpu.cpu_class == cpu_class
    assert extract.compile_limits(runtime, cpu) == expected


def test_fp32_break_even_comes_from_the_recorded_measurement() -> None:
    assert extract.FP32_LIMITS.min_tflop == round(extract.break_even_tflop(53.0, 30.0, 73.0), 1)
    assert 2.0 < extract.FP32_LIMITS.min_tflop < 3.0
    assert extract.FP32_LIMITS.max_gflop_per_image < extract.BF16_LIMITS.max_gflop_per_image


@pytest.mark.parametrize(
    ("cpu_class", "gflop_per_image", "images", "compiles"),
    [
        ("avx2", 0.42, 10_000, True),  # InceptionV3 at 80 px: 4.2 TFLOP, small images
        ("avx2", 0.42, 1_000, False),  # 0.4 TFLOP: the compile would not be repaid
        ("avx2", 1.12, 20_000, False),  # ResNet50 at 80 px: fp32 eager is as fast
        ("avx512-bf16", 1.12, 20_000, True),  # the same on bf16: 22 TFLOP, compiling gains
        ("avx512-bf16", 0.42, 10_000, False),  # 4.2 TFLOP: under bf16's 20 TFLOP
        ("amx", 8.0, 100_000, False),  # 224 px: eager bf16 is as good
    ],
)
def test_which_path_runs_on_which_class(
    monkeypatch, cpu_class, gflop_per_image, images, compiles
) -> None:
    monkeypatch.setattr(extract.shutil, "which", lambda name: "/usr/bin/cc")
    cpu = fake_cpu(cpu_class)
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: cpu)
    runtime = select_runtime("auto")
    assert (runtime.amp_dtype is torch.bfloat16) == cpu.bf16 or torch.cuda.is_available()
    limits = extract.compile_limits(runtime, cpu)
    decided = extract.should_compile(
        "auto",
        lambda: gflop_per_image / 1e3,
        images,
        limits.min_tflop,
        limits.max_gflop_per_image,
    )
    assert decided is compiles


def test_extraction_asks_the_class_limits_and_an_explicit_setting_wins(monkeypatch) -> None:
    seen: list[tuple[float, float]] = []

    def spy(setting, per_image, images, min_tflop, max_gflop):
        seen.append((min_tflop, max_gflop))
        return False

    monkeypatch.setattr(extract, "should_compile", spy)
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: fake_cpu("avx2"))
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    model = spec.builder(3).eval()
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    normalize = Normalize(spec.mean, spec.std, 3)
    extract.extract_features(model, spec.nodes[:1], images, normalize, FP32, compile="auto")
    extract.extract_features(
        model, spec.nodes[:1], images, normalize, FP32, compile="auto", compile_min_tflop=7.0
    )
    limits = extract.FP32_LIMITS
    assert seen == [
        (limits.min_tflop, limits.max_gflop_per_image),
        (7.0, limits.max_gflop_per_image),
    ]


def test_an_avx2_class_extracts_the_fp32_features(monkeypatch) -> None:
    """Accuracy guard: on an AVX2-only record ``auto`` resolves to fp32, and the features
    are the plain fp32 forward's (BatchNorm folding changes only rounding)."""
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: fake_cpu("avx2"))
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU")
    runtime = select_runtime("auto")
    assert runtime.amp_dtype is None
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    model = spec.builder(3).eval()
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    normalize = Normalize(spec.mean, spec.std, 3)
    ours = extract.extract_features(model, spec.nodes, images, normalize, runtime, compile="off")
    reference = extract.multi_node_extractor(model, spec.nodes)
    with torch.no_grad():
        plain = reference(normalize(torch.from_numpy(images)))
    for node in spec.nodes:
        np.testing.assert_allclose(
            ours[node], extract.pool(plain[node], ("avg",)).numpy(), rtol=1e-4, atol=1e-5
        )
