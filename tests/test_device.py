"""Device and precision selection; memory layout for 2-D and 3-D convolutions."""

from __future__ import annotations

import torch

from cad.backbones import get_spec
from cad.device import Runtime, describe, select_runtime


def test_cpu_runtime_follows_the_precision_setting(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_runtime("fp32").amp_dtype is None
    assert select_runtime("bf16").amp_dtype == torch.bfloat16
    monkeypatch.setattr("cad.device.cpu_supports_bf16", lambda: False)
    assert select_runtime("auto").amp_dtype is None  # no bf16 units: stay fp32
    monkeypatch.setattr("cad.device.cpu_supports_bf16", lambda: True)
    runtime = select_runtime("auto")
    assert runtime.amp_dtype == torch.bfloat16 and not runtime.uses_grad_scaler
    assert describe(runtime) == "cpu (bfloat16 autocast, channels_last)"


def test_gpu_runtime_uses_amp_and_a_grad_scaler_for_fp16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    runtime = select_runtime("auto")
    assert runtime.device.type == "cuda" and runtime.amp_dtype == torch.float16
    assert runtime.uses_grad_scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert select_runtime("auto").amp_dtype == torch.bfloat16
    assert select_runtime("fp32").amp_dtype is None


def test_channels_last_handles_mixed_2d_and_3d_convolutions() -> None:
    spec = get_spec("hybridsn")  # 3-D convolutions over DCE phases, then 2-D ones
    model = spec.builder(spec.in_chans).eval()
    runtime = Runtime(torch.device("cpu"), None, channels_last=True)
    model = runtime.prepare(model)
    convs = (torch.nn.Conv2d, torch.nn.Conv3d)
    weights = [m.weight for m in model.modules() if isinstance(m, convs)]
    assert any(w.dim() == 5 for w in weights) and any(w.dim() == 4 for w in weights)
    for w in weights:
        layout = torch.channels_last_3d if w.dim() == 5 else torch.channels_last
        assert w.is_contiguous(memory_format=layout)
    x = runtime.batch(torch.rand(2, spec.in_chans, spec.input_size, spec.input_size))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()
