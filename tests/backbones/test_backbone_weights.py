"""Weights: the offline ImageNet cache, fallbacks, local files, channel adaptation, describe."""

from __future__ import annotations

import dataclasses
import os
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cad.backbones import (
    check_weights,
    create_backbone,
    describe,
    get_spec,
    node_shapes,
    registry,
    weights_location,
)
from cad.errors import CadError, WeightsError

SMALL_TV = "mobilenet_v3_small"  # the smallest torchvision net: cheap fake checkpoints


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path: Path) -> Path:
    """Empty torch and Hugging Face caches under tmp; any download attempt fails."""

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


def checkpoint_path(name: str) -> Path:
    url = torchvision.models.get_weight(get_spec(name).weights).url
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / os.path.basename(url)


def fake_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """A random state dict of ``name``, saved under the file name torchvision expects."""
    torch.manual_seed(1)
    state = get_spec(name).builder(3).state_dict()
    path = checkpoint_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_imagenet_weights_load_from_the_torchvision_cache() -> None:
    state = fake_checkpoint(SMALL_TV)
    loaded = create_backbone(SMALL_TV, weights="imagenet")
    assert loaded.weights_source == "imagenet:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert not loaded.fell_back and not loaded.model.training
    assert_same_weights(loaded.model, state)


def test_imagenet_stem_is_adapted_to_one_channel() -> None:
    state = fake_checkpoint(SMALL_TV)
    loaded = create_backbone(SMALL_TV, weights="imagenet", in_chans=1)
    assert "features.0.0.weight adapted to 1 channel(s)" in loaded.message
    model = loaded.model
    stem = model.features[0][0].weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem, state["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


def test_googlenet_imagenet_weights_switch_on_input_transform() -> None:
    fake_checkpoint("googlenet")
    assert create_backbone("googlenet", weights="imagenet").model.transform_input is True
    gray = create_backbone("googlenet", weights="imagenet", in_chans=1).model
    assert gray.transform_input is False


def test_missing_imagenet_file_names_file_and_folder_before_any_work(monkeypatch) -> None:
    def crash(in_chans: int) -> torch.nn.Module:
        raise AssertionError("built before the weights were checked")

    spec = dataclasses.replace(get_spec("resnet50"), builder=crash)
    monkeypatch.setitem(registry._REGISTRY, "resnet50", spec)
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet50", weights="imagenet")
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    message = str(err.value)
    assert message.startswith("ImageNet weights for resnet50 not found: ")
    assert f"put resnet50-11ad3fa6.pth into {folder}/" in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "weights: random" in message
    assert check_weights("resnet50", "imagenet") == message
    assert check_weights("resnet50", "random") == ""


def test_fallback_builds_random_weights_loudly() -> None:
    loaded = create_backbone(SMALL_TV, weights="imagenet", fallback="random")
    assert loaded.fell_back
    assert loaded.weights_source.startswith("random (fallback: ")
    assert "mobilenet_v3_small-047dcff4.pth" in loaded.message and "WARNING" in loaded.message
    assert loaded.model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_random_weights() -> None:
    loaded = create_backbone("lenet5", in_chans=1)
    assert (loaded.weights_source, loaded.fell_back) == ("random", False)


def test_own_nets_have_no_imagenet_weights() -> None:
    with pytest.raises(WeightsError, match="lenet5 has no pretrained weights"):
        create_backbone("lenet5", weights="imagenet")
    assert create_backbone("lenet5", weights="imagenet", fallback="random").fell_back


def test_timm_weights_load_from_the_hugging_face_cache(offline: Path) -> None:
    spec = get_spec("seresnet50")
    with pytest.raises(WeightsError) as err:
        create_backbone("seresnet50", weights="imagenet")
    repo = offline / "hf" / "models--timm--seresnet50.a1_in1k"
    assert f"put model.safetensors into {repo}/snapshots/<commit>/" in str(err.value)

    torch.manual_seed(2)
    state = spec.builder(3).state_dict()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "0123abcd" / "model.safetensors")
    loaded = create_backbone("seresnet50", weights="imagenet")
    assert loaded.weights_source == "imagenet:timm/seresnet50.a1_in1k"
    assert_same_weights(loaded.model, state)
    assert describe(spec)["cached"] is True


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_local_weights_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(3)
    state = get_spec("lenet5").builder(1).state_dict()
    path = tmp_path / f"lenet{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:  # a wrapped, DataParallel-prefixed checkpoint also loads
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = create_backbone("lenet5", weights=str(path), in_chans=1)
    assert loaded.weights_source == f"file:lenet{suffix}"
    assert_same_weights(loaded.model, state)


def test_local_file_adapts_three_channel_stem(tmp_path: Path) -> None:
    state = get_spec("resnet18").builder(3).state_dict()
    save_file(state, tmp_path / "r18.safetensors")
    model = create_backbone("resnet18", str(tmp_path / "r18.safetensors"), in_chans=2).model
    assert model.conv1.weight.shape[1] == 2


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    state = get_spec("lenet5").builder(1).state_dict()
    state["extra.weight"] = state.pop("c1.conv.weight")
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError) as err:
        create_backbone("lenet5", str(tmp_path / "bad.safetensors"), in_chans=1)
    message = str(err.value)
    assert "1 missing keys (c1.conv.weight)" in message
    assert "1 unexpected keys (extra.weight)" in message


def test_mismatched_shapes_are_listed(tmp_path: Path) -> None:
    state = get_spec("lenet5").builder(1).state_dict()
    state["output.weight"] = torch.zeros(2, 84)
    save_file(state, tmp_path / "head.safetensors")
    with pytest.raises(WeightsError, match=r"output.weight \(2, 84\) vs \(10, 84\)"):
        create_backbone("lenet5", str(tmp_path / "head.safetensors"), in_chans=1)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        create_backbone("lenet5", str(tmp_path / "junk.pt"))
    with pytest.raises(WeightsError, match="weights file not found"):
        create_backbone("lenet5", str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsError, match="did you mean 'imagenet'"):
        create_backbone("lenet5", "imagnet")
    assert create_backbone("lenet5", str(tmp_path / "absent.pth"), fallback="random").fell_back


def test_bad_arguments() -> None:
    with pytest.raises(CadError, match="did you mean 'random'"):
        create_backbone("lenet5", fallback="randm")
    with pytest.raises(CadError, match="in_chans"):
        create_backbone("lenet5", in_chans=0)
    with pytest.raises(CadError, match="did you mean 'resnet18'"):
        create_backbone("resnet19")


def test_describe_reports_size_cost_and_cache() -> None:
    info = describe(get_spec("resnet18"))
    assert info["params"] == 11_689_512
    assert 3.5 < info["gflops"] < 3.8  # 1.8 G multiply-adds at 224x224
    assert info["pretrained"] is True and info["cached"] is False
    assert info["weights_file"].endswith("resnet18-f37072fd.pth")
    assert info["nodes"] == 5
    lenet = describe(get_spec("lenet5"))
    assert lenet["pretrained"] is False and lenet["weights_file"] is None
    assert weights_location(get_spec("lenet5")) is None


def test_node_shapes_has_no_batch_dim_and_keeps_the_mode() -> None:
    spec = get_spec("resnet18")
    model = spec.builder(3).train()
    shapes = node_shapes(model, spec.nodes, 64, 3)
    assert shapes == {
        "maxpool": (64, 16, 16),
        "layer1.1.relu_1": (64, 16, 16),
        "layer2.1.relu_1": (128, 8, 8),
        "layer3.1.relu_1": (256, 4, 4),
        "layer4.1.relu_1": (512, 2, 2),
    }
    assert model.training and all(m.training for m in model.modules())
