"""The networks written here reproduce their papers' layer shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cad.backbones import get_spec, node_shapes
from cad.backbones.hybridsn import HybridSN, depth_kernels
from cad.backbones.mobilenet_v1 import MobileNetV1
from cad.backbones.nin import NIN


def shapes_at(name: str, size: int, in_chans: int | None = None) -> dict[str, tuple[int, ...]]:
    spec = get_spec(name)
    chans = in_chans or spec.in_chans
    return node_shapes(spec.builder(chans), spec.nodes, size, chans)


def test_lenet5_layer_sizes() -> None:
    assert shapes_at("lenet5", 32) == {
        "s2": (6, 14, 14),
        "s4": (16, 5, 5),
        "c5.act": (120, 1, 1),
        "f6.act": (84,),
    }
    model = get_spec("lenet5").builder(1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 61_706  # full C3 connections


def test_zfnet_layer_sizes_follow_the_paper() -> None:
    shapes = shapes_at("zfnet", 224)
    assert shapes["features.norm1"] == (96, 55, 55)
    assert shapes["features.norm2"] == (256, 13, 13)
    assert shapes["features.relu4"] == (384, 13, 13)
    assert shapes["features.pool5"] == (256, 6, 6)
    assert shapes["classifier.relu7"] == (4096,)
    stem = get_spec("zfnet").builder(3).features.conv1
    assert (stem.kernel_size, stem.stride) == ((7, 7), (2, 2))


def test_nin_uses_mlpconv_and_global_average_pooling() -> None:
    assert shapes_at("nin", 224) == {
        "pool1": (96, 27, 27),
        "pool2": (256, 13, 13),
        "pool3": (384, 6, 6),
        "mlpconv4.relu0": (1024, 6, 6),
        "mlpconv4.relu1": (1024, 6, 6),
    }
    model = NIN(in_chans=1, num_classes=7)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("width, params", [(1.0, 4.23e6), (0.5, 1.33e6)])
def test_mobilenet_v1_width_multiplier_matches_the_paper(width: float, params: float) -> None:
    model = MobileNetV1(width_mult=width)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)
    convs = [m for m in model.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.groups == c.in_channels or c.kernel_size == (1, 1) for c in convs)
    assert len(convs) == 26  # 13 depthwise separable blocks


def test_mobilenet_v1_resolutions() -> None:
    shapes = shapes_at("mobilenet_v1", 224)
    assert [s[1] for s in shapes.values()] == [112, 112, 56, 28, 14, 7]
    assert shapes["blocks.12.act2"] == (1024, 7, 7)


def test_hybridsn_reproduces_the_paper_with_30_bands() -> None:
    assert depth_kernels(30) == ((7, 5, 3), 18)
    assert shapes_at("hybridsn", 25, in_chans=30) == {
        "to_2d": (576, 19, 19),  # 32 maps x 18 depth
        "conv2d.relu": (64, 17, 17),
        "fc1.relu": (256,),
        "fc2.relu": (128,),
    }
    assert HybridSN(30).fc1.fc.in_features == 18496


@pytest.mark.parametrize("in_chans, kernels", [(1, (1, 1, 1)), (3, (3, 1, 1)), (8, (7, 2, 1))])
def test_hybridsn_clamps_depth_kernels_for_few_channels(in_chans: int, kernels: tuple) -> None:
    assert depth_kernels(in_chans) == (kernels, 1)
    model = HybridSN(in_chans, num_classes=2)
    assert model(torch.zeros(2, in_chans, 32, 32)).shape == (2, 2)


def test_googlenet_auxiliary_classifiers_hang_off_4a_and_4d() -> None:
    spec = get_spec("googlenet")
    shapes = node_shapes(spec.builder(3), spec.aux_nodes, 224, 3)
    assert list(shapes.values()) == [(512, 14, 14), (528, 14, 14)]
