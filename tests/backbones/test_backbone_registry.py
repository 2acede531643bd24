"""The registry: names, lookups, duplicates, and specs that match their weights."""

from __future__ import annotations

import dataclasses

import pytest
import torchvision
from timm.models import get_pretrained_cfg

from cad.backbones import BackboneSpec, get_spec, list_specs, register
from cad.backbones import registry as registry_module
from cad.errors import CadError

EXPECTED = {
    "lenet5", "alexnet", "zfnet", "nin", "googlenet", "inception_v3", "inception_v4",
    "inception_resnet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet50_blocks", "densenet121", "densenet169", "densenet201", "mobilenet_v1",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "seresnet50", "hybridsn",
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
}  # fmt: skip


def test_all_classic_networks_are_registered() -> None:
    names = [s.name for s in list_specs()]
    assert EXPECTED <= set(names)
    assert len(names) == len(set(names))
    assert "dncnn" not in names  # a denoiser, not a classifier backbone


def test_get_spec_and_unknown_name_suggests_the_closest() -> None:
    assert get_spec("resnet50").family == "resnet"
    with pytest.raises(CadError) as err:
        get_spec("resnet5")
    assert str(err.value) == "unknown backbone 'resnet5'; did you mean 'resnet50'?"


def test_duplicate_register_raises_and_keeps_the_original(monkeypatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    original = get_spec("vgg16")
    clone = dataclasses.replace(original, description="impostor")
    with pytest.raises(CadError, match="already registered"):
        register(clone)
    assert get_spec("vgg16") is original
    fresh = dataclasses.replace(original, name="vgg16_test_copy")
    assert register(fresh) is fresh and get_spec("vgg16_test_copy") is fresh


@pytest.mark.parametrize(
    "change, match",
    [
        ({"node_depths": (2, 1, 3, 4, 5, 6, 7)}, "increase"),
        ({"node_depths": (1, 2)}, "node_depths"),
        ({"nodes": ()}, "no candidate nodes"),
        ({"min_size": 500}, "min_size"),
        ({"source": "keras"}, "did you mean|valid"),
    ],
)
def test_invalid_specs_are_rejected(change: dict, match: str) -> None:
    with pytest.raises(CadError, match=match):
        dataclasses.replace(get_spec("vgg16"), **change)


def test_paper_nodes_of_the_three_transfer_backbones() -> None:
    vgg = get_spec("vgg16")
    assert vgg.nodes[-2:] == ("classifier.1", "classifier.4")  # fc6/fc7 after ReLU
    assert vgg.node_depths == (2, 4, 7, 10, 13, 14, 15)
    assert get_spec("resnet50").nodes[0] == "maxpool" and len(get_spec("resnet50").nodes) == 5
    assert len(get_spec("resnet50_blocks").nodes) == 1 + 16
    assert len(get_spec("inception_v3").nodes) == 2 + 11  # stem + every Mixed block
    assert get_spec("googlenet").aux_nodes == ("inception4a.cat", "inception4d.cat")


@pytest.mark.parametrize(
    "spec", [s for s in list_specs() if s.source == "torchvision"], ids=lambda s: s.name
)
def test_torchvision_specs_match_their_weight_enum(spec: BackboneSpec) -> None:
    weights = torchvision.models.get_weight(spec.weights)  # no download: metadata only
    transform = weights.transforms()
    assert tuple(transform.mean) == spec.mean and tuple(transform.std) == spec.std
    assert transform.crop_size == [spec.input_size]
    assert weights.meta["min_size"][0] <= spec.min_size


@pytest.mark.parametrize(
    "spec", [s for s in list_specs() if s.source == "timm"], ids=lambda s: s.name
)
def test_timm_specs_match_the_pretrained_config(spec: BackboneSpec) -> None:
    cfg = get_pretrained_cfg(spec.weights.removeprefix("timm/"))
    assert cfg is not None and cfg.hf_hub_id == spec.weights
    assert cfg.input_size == (3, spec.input_size, spec.input_size)
    assert cfg.mean == spec.mean and cfg.std == spec.std


def test_own_nets_have_no_weights_and_unit_normalisation() -> None:
    for spec in list_specs():
        if spec.source == "cad":
            assert spec.weights is None and spec.mean == (0.5,) and spec.std == (0.5,)
        assert spec.description
