"""int8 extraction (``extract.quantize: int8``): close to fp32, deterministic, calibrated only
on the first images it is given, CPU only, and a result field of the extract stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cad.backbones import get_spec
from cad.config import load_config
from cad.device import Runtime
from cad.errors import ConfigError
from cad.features.extract import extract_features
from cad.finetune.model import Normalize
from cad.quantize import CALIBRATION_IMAGES, quantize_int8

CPU = torch.device("cpu")
FP32 = Runtime(CPU, None, channels_last=True)


def _resnet18():
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    return spec, spec.builder(3).eval(), Normalize(spec.mean, spec.std, 3)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 48, 48), dtype=np.float32)


def test_an_int8_copy_is_close_to_fp32_deterministic_and_leaves_the_module_alone() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3), torch.nn.Flatten()
    ).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(8, 3, 16, 16)
    first, second = quantize_int8(net, [x]), quantize_int8(net, [x])
    with torch.no_grad():
        reference, out = net(x), first(x)
        assert torch.equal(out, second(x))  # observers are deterministic
    assert out.shape == reference.shape
    assert float((out - reference).abs().max() / reference.abs().max()) < 0.05
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(net, [])


def test_int8_features_track_fp32_at_every_node() -> None:
    spec, model, normalize = _resnet18()
    nodes = list(spec.nodes)
    images = _images(40)
    fp32 = extract_features(model, nodes, images, normalize, FP32, 16)
    int8 = extract_features(model, nodes, images, normalize, FP32, 16, quantize="int8")
    for node in nodes:
        assert int8[node].shape == fp32[node].shape and int8[node].dtype == np.float32
        corr = np.corrcoef(int8[node].ravel(), fp32[node].ravel())[0, 1]
        assert corr > 0.98, (node, corr)
        assert not np.array_equal(int8[node], fp32[node])  # it did run quantized


def test_int8_calibration_sees_only_the_first_images() -> None:
    """Ranges come from the first CALIBRATION_IMAGES of the set (the training images the
    stage passes): what comes later never changes how an earlier image is quantized."""
    spec, model, normalize = _resnet18()
    nodes = list(spec.nodes)[-2:]
    images = _images(CALIBRATION_IMAGES + 8)
    changed = images.copy()
    changed[CALIBRATION_IMAGES:] = _images(8, seed=1)
    a = extract_features(model, nodes, images, normalize, FP32, 16, quantize="int8")
    b = extract_features(model, nodes, changed, normalize, FP32, 16, quantize="int8")
    head = slice(0, CALIBRATION_IMAGES)
    assert all(np.array_equal(a[n][head], b[n][head]) for n in nodes)
    assert not np.array_equal(a[nodes[-1]], b[nodes[-1]])


def test_int8_is_refused_off_the_cpu() -> None:
    spec, model, normalize = _resnet18()
    gpu = Runtime(torch.device("cuda"), torch.bfloat16, channels_last=True)
    with pytest.raises(ConfigError, match="extract.quantize: int8 is a CPU path"):
        extract_features(model, list(spec.nodes), _images(2), normalize, gpu, quantize="int8")


def test_quantize_is_a_result_field_of_the_extract_stage() -> None:
    from cad.pipeline.graph import build_graph
    from cad.pipeline.stages.layers import ExtractStage

    identities = []
    for value in ("off", "int8"):
        config = load_config("pipelines/smoke.yaml", [f"extract.quantize={value}"])
        (node,) = [n for n in build_graph(config, "fingerprint") if n.stage.name == "extract"]
        assert isinstance(node.stage, ExtractStage)
        identities.append(node.stage.identity(node.settings))
    assert identities[1]["precision"] == "cpu-int8" != identities[0]["precision"]
    assert identities[0]["extract"]["quantize"] == "off" != identities[1]["extract"]["quantize"]
