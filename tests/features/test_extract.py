"""The frozen inference copy used by extraction: same features, backbone untouched."""

from __future__ import annotations

from contextlib import nullcontext as contextlib_null

import numpy as np
import pytest
import torch

from cad.backbones import get_spec
from cad.device import Runtime
from cad.features.extract import extract_features, inference_module, multi_node_extractor
from cad.finetune.model import Normalize

CPU = torch.device("cpu")
FP32 = Runtime(CPU, None, channels_last=True)
BF16 = Runtime(CPU, torch.bfloat16, channels_last=True)


def _reference(model, nodes, images, normalize) -> dict[str, np.ndarray]:
    """The plain fp32 forward (no folding, no casting), globally average-pooled."""
    extractor = multi_node_extractor(model, nodes)
    with torch.no_grad():
        feats = extractor(normalize(torch.from_numpy(images)))
    return {n: (t.flatten(2).mean(2) if t.dim() > 2 else t).numpy() for n, t in feats.items()}


@pytest.mark.parametrize(
    "name", ["resnet18", "vgg11_bn", "densenet121", "mobilenet_v2", "googlenet", "hybridsn"]
)
def test_folded_features_match_the_plain_forward_and_leave_the_backbone_alone(name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.builder(spec.in_chans).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = spec.input_size if spec.input_size < 64 else max(spec.min_size, 64)
    images = np.random.default_rng(0).random((3, spec.in_chans, size, size), dtype=np.float32)
    normalize = Normalize(spec.mean, spec.std, spec.in_chans)
    expected = _reference(model, spec.nodes, images, normalize)

    exact = extract_features(model, spec.nodes, images, normalize, FP32, batch_size=2)
    fast = extract_features(model, spec.nodes, images, normalize, BF16, batch_size=2)
    for node in spec.nodes:
        scale = np.abs(expected[node]).max() + 1e-6
        assert exact[node].dtype == np.float32 and exact[node].shape == expected[node].shape
        assert np.abs(exact[node] - expected[node]).max() / scale < 1e-4, node
        assert np.abs(fast[node] - expected[node]).max() / scale < 0.05, node
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    ), "extraction changed the backbone"


def test_batchnorm_is_folded_and_bf16_weights_are_cast_once() -> None:
    spec = get_spec("resnet18")
    model = spec.builder(3).eval()
    extractor = multi_node_extractor(model, spec.nodes)
    normalize = Normalize(spec.mean, spec.std, 3)
    module, needs_autocast = inference_module(extractor, normalize, BF16)
    kinds = {type(m).__name__ for m in module.modules()}
    assert "BatchNorm2d" not in kinds and not needs_autocast
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    fp16 = Runtime(CPU, torch.float16, channels_last=False)
    module, needs_autocast = inference_module(extractor, normalize, fp16)
    assert needs_autocast and {p.dtype for p in module.parameters()} == {torch.float32}


def _lenet_inputs():
    spec = get_spec("lenet5")
    torch.manual_seed(0)
    model = spec.builder(spec.in_chans).eval()
    size = spec.input_size
    images = np.random.default_rng(1).random((5, spec.in_chans, size, size), dtype=np.float32)
    return spec, model, images, Normalize(spec.mean, spec.std, spec.in_chans)


def test_compiled_extraction_pads_the_last_batch_and_matches_eager() -> None:
    spec, model, images, normalize = _lenet_inputs()
    eager = extract_features(model, spec.nodes, images, normalize, FP32, batch_size=2)
    compiled = extract_features(
        model, spec.nodes, images, normalize, FP32, batch_size=2, compile="on"
    )
    for node in spec.nodes:
        assert compiled[node].shape == eager[node].shape == (5, eager[node].shape[1])
        np.testing.assert_allclose(compiled[node], eager[node], rtol=1e-4, atol=1e-5)


def test_a_failing_compile_falls_back_to_eager(monkeypatch, caplog) -> None:
    spec, model, images, normalize = _lenet_inputs()

    def broken(module, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    eager = extract_features(model, spec.nodes, images, normalize, FP32, batch_size=2)
    fallback = extract_features(
        model, spec.nodes, images, normalize, FP32, batch_size=2, compile="on"
    )
    assert "torch.compile failed" in caplog.text
    for node in spec.nodes:
        np.testing.assert_allclose(fallback[node], eager[node], rtol=1e-5, atol=1e-6)


def test_auto_compiles_large_extractions_of_small_images_only(monkeypatch) -> None:
    from cad.features import extract

    small, large = lambda: 0.001, lambda: 0.030  # TFLOP per image: 1 and 30 GFLOP
    assert extract.should_compile("auto", small, 25_000, 20.0, 6.0)  # 25 TFLOP in all
    assert not extract.should_compile("auto", small, 5_000, 20.0, 6.0)  # too little work
    assert not extract.should_compile("auto", large, 25_000, 20.0, 6.0)  # eager is as good
    assert extract.should_compile("on", large, 1, 20.0, 6.0)
    assert not extract.should_compile("off", small, 10**9, 20.0, 6.0)
    monkeypatch.setattr(extract.shutil, "which", lambda name: None)  # no C compiler
    assert not extract.should_compile("on", small, 10**9, 20.0, 6.0)


def test_forward_tflop_counts_the_network() -> None:
    from cad.features.extract import forward_tflop

    spec, model, images, normalize = _lenet_inputs()
    module, _ = inference_module(multi_node_extractor(model, spec.nodes), normalize, FP32)
    per_image = forward_tflop(module, images.shape[1:], 1, FP32, contextlib_null)
    assert 2 * 0.3e6 < per_image * 1e12 < 2 * 0.5e6  # LeNet-5: ~0.4M multiply-adds
    assert forward_tflop(module, images.shape[1:], 10, FP32, contextlib_null) == 10 * per_image
