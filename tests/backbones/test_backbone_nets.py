"""Every registered backbone builds, runs, declares real candidate nodes, and cuts there."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cad.backbones import BackboneSpec, get_spec, list_specs, node_shapes
from cad.backbones._graph import weight_layer_depths

# the biggest nets (timm Inceptions trace for seconds); every family keeps members by default
SLOW = {"inception_v4", "inception_resnet_v2", "vgg19_bn", "resnet152", "densenet201"}
SLOW |= {"densenet169", "resnet101", "vgg19", "vgg16_bn", "vgg13_bn"}


def _params(specs: list[BackboneSpec]) -> list:
    return [
        pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.name in SLOW else [])
        for s in specs
    ]


SPECS = _params(list_specs())


def small_size(spec: BackboneSpec) -> int:
    """The design's own size when it is small (LeNet-5, HybridSN), else >= 64."""
    return spec.input_size if spec.input_size < 64 else max(spec.min_size, 64)


def test_every_family_runs_by_default() -> None:
    families = {s.family for s in list_specs()}
    fast = {s.family for s in list_specs() if s.name not in SLOW}
    assert families == fast
    assert {"resnet", "vgg", "inception", "densenet", "mobilenet", "senet"} <= families
    assert {"lenet", "alexnet", "nin", "hybridsn"} <= families


@pytest.mark.parametrize("spec", SPECS)
def test_forward_and_candidate_nodes(spec: BackboneSpec) -> None:
    torch.manual_seed(0)
    model = spec.builder(spec.in_chans).eval()
    size = small_size(spec)
    x = torch.randn(1, spec.in_chans, size, size)  # batch 1, as node_shapes: shared kernels
    with torch.no_grad():
        logits = model(x)
        model(torch.zeros(1, spec.in_chans, spec.min_size, spec.min_size))
    assert logits.ndim == 2 and logits.shape[0] == 1 and torch.isfinite(logits).all()

    train_names, eval_names = get_graph_node_names(model, suppress_diff_warning=True)
    assert set(spec.nodes) <= set(eval_names), "nodes must be eval-graph names"
    assert set(spec.nodes) <= set(train_names), "nodes must also be cuttable in train mode"
    assert set(spec.aux_nodes) <= set(eval_names)
    order = [eval_names.index(n) for n in spec.nodes]
    assert order == sorted(order), "nodes must run shallow -> deep"
    assert weight_layer_depths(model, spec.nodes) == spec.node_depths

    extractor = create_feature_extractor(model, list(spec.nodes), suppress_diff_warning=True)
    with torch.no_grad():
        feats = extractor.eval()(x)
    shapes = node_shapes(model, spec.nodes, size, spec.in_chans)
    assert list(shapes) == list(spec.nodes)
    for node in spec.nodes:
        out = feats[node]
        assert isinstance(out, torch.Tensor) and out.ndim in (2, 4), node
        assert out.shape[0] == 1 and min(out.shape) >= 1 and torch.isfinite(out).all(), node
        assert shapes[node] == tuple(out.shape[1:]), node


@pytest.mark.parametrize("spec", SPECS)
def test_middle_node_is_cuttable(spec: BackboneSpec) -> None:
    """Cut at the middle node, add a linear head, and take one SGD step (in_chans 1 or 3)."""
    torch.manual_seed(0)
    in_chans = 1 if spec.in_chans != 1 else 3
    model = spec.builder(in_chans)
    node = spec.nodes[len(spec.nodes) // 2]
    body = create_feature_extractor(model, return_nodes=[node], suppress_diff_warning=True)
    body_params = list(body.parameters())
    assert 0 < len(body_params) < len(list(model.parameters())), "nothing cut away"

    size = small_size(spec)
    x = torch.randn(2, in_chans, size, size)
    body.train()
    feat = body(x)[node]
    pooled = feat.mean(dim=(2, 3)) if feat.ndim == 4 else feat
    head = nn.Linear(pooled.shape[1], 2)
    optimizer = torch.optim.SGD(body_params + list(head.parameters()), lr=0.1)
    loss = nn.functional.cross_entropy(head(pooled), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    stem = body_params[0]
    assert stem.grad is not None and stem.grad.abs().sum() > 0, "no gradient reaches the stem"
    before = stem.detach().clone()
    optimizer.step()
    assert not torch.equal(before, stem.detach())


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "resnet18", "mobilenet_v3_small"])
def test_one_pass_extraction_matches_single_nodes(name: str) -> None:
    """In-place ops (ReLU(inplace=True), +=) never alter a node returned in the same pass."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.builder(3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        together = create_feature_extractor(model, list(spec.nodes)).eval()(x)
        for node in spec.nodes:
            alone = create_feature_extractor(model, [node]).eval()(x)[node]
            assert torch.equal(alone, together[node]), node
