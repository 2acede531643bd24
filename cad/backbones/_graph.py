"""torch.fx helpers shared by the backbone modules and their tests (private)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torchvision
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _ops_leaves() -> list[type]:
    """torchvision.ops modules: leaves for get_graph_node_names, hence here too (same names)."""
    return [
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module)
    ]


def weight_layer_depths(model: nn.Module, nodes: Sequence[str]) -> tuple[int, ...]:
    """Weight layers (conv/linear) executed up to and including each node (eval graph)."""
    was_training = model.training
    model.eval()
    try:
        tracer = NodePathTracer(
            autowrap_modules=(math, torchvision.ops), leaf_modules=_ops_leaves()
        )
        graph = tracer.trace(model)
    finally:
        model.train(was_training)
    depth_of: dict[str, int] = {}
    count = 0
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            count += sum(isinstance(m, WEIGHT_LAYERS) for m in module.modules())
        name = tracer.node_to_qualname.get(node)
        if name is not None:
            depth_of[name] = count
    return tuple(depth_of[n] for n in nodes)
