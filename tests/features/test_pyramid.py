"""Spatial pyramid pooling of node features: where in the slice a response lies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cad.backbones import get_spec
from cad.config import load_config
from cad.device import Runtime
from cad.errors import ConfigError
from cad.features.extract import extract_features, pool
from cad.finetune.model import Normalize


def test_level_one_is_global_pooling_and_level_two_pools_each_quadrant() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(pool(x, ("avg", "max")), pool(x, ("avg", "max"), (1,)))
    out = pool(x, ("avg", "max"), (1, 2))
    assert out.shape == (2, 3 * 2 + 3 * 4 * 2)
    quadrant_means = x.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1)  # rows/cols halves
    quadrant_maxes = x.reshape(2, 3, 2, 2, 2, 2).amax(dim=(3, 5)).flatten(1)
    assert torch.equal(out[:, :3], x.flatten(2).mean(2))
    assert torch.equal(out[:, 3:6], x.flatten(2).amax(2))
    assert torch.equal(out[:, 6:18], quadrant_means)
    assert torch.equal(out[:, 18:], quadrant_maxes)


def test_a_spot_in_another_quadrant_changes_only_the_pyramid_features() -> None:
    """The same bright spot top-left or bottom-right: global features cannot tell, level 2 can."""
    top_left, bottom_right = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    top_left[..., 1, 1] = bottom_right[..., 6, 6] = 1.0
    assert torch.equal(pool(top_left, ("avg", "max")), pool(bottom_right, ("avg", "max")))
    assert not torch.equal(pool(top_left, ("max",), (1, 2)), pool(bottom_right, ("max",), (1, 2)))


def test_vectors_pass_through_and_other_ranks_pool_globally() -> None:
    vector = torch.randn(4, 10)
    assert torch.equal(pool(vector, ("avg", "max"), (1, 2)), vector)
    volume = torch.randn(2, 3, 4, 4, 4)  # a 3-D map (HybridSN): level 2 does not apply
    assert pool(volume, ("avg",), (1, 2)).shape == (2, 3)


def test_extraction_returns_the_pyramid_at_every_node() -> None:
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    model = spec.builder(3).eval()
    images = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    runtime = Runtime(torch.device("cpu"), None, channels_last=True)
    normalize = Normalize(spec.mean, spec.std, 3)
    flat = extract_features(model, spec.nodes, images, normalize, runtime, pooling=("avg",))
    pyramid = extract_features(
        model, spec.nodes, images, normalize, runtime, pooling=("avg",), grid=(1, 2)
    )
    for node in spec.nodes:
        width = flat[node].shape[1]
        assert pyramid[node].shape == (3, width * 5)
        np.testing.assert_array_equal(pyramid[node][:, :width], flat[node])


@pytest.mark.parametrize("grid", ["[]", "[1, 1]", "[0]", "[9]"])
def test_a_bad_grid_is_a_config_error(grid: str) -> None:
    with pytest.raises(ConfigError, match="grid"):
        load_config("pipelines/smoke.yaml", [f"extract.grid={grid}"])


def test_grid_is_a_result_field_of_the_extract_stage() -> None:
    from cad.pipeline.graph import build_graph

    keys = []
    for grid in ("[1]", "[1, 2]"):
        config = load_config("pipelines/smoke.yaml", [f"extract.grid={grid}"])
        (node,) = [n for n in build_graph(config, "fingerprint") if n.stage.name == "extract"]
        keys.append(node.stage.identity(node.settings)["extract"]["grid"])
    assert keys == [[1], [1, 2]]
