"""The transfer model: a backbone cut at the connection node, frozen up to the fine-tuning node,
with a new two-layer fully-connected head.

Cutting and freezing work on the torch.fx graph that torchvision's feature extraction traces,
so they are the same for every backbone in the registry: the body computes the connection
node; every module that the fine-tuning node's value depends on is frozen (and kept in eval
mode, which also fixes its BatchNorm statistics and disables its dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor

FINETUNE_KEY = "finetune"
FEATURES_KEY = "features"


class Normalize(nn.Module):
    """Per-channel (x - mean) / std so that inputs match what the weights expect."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean = list(mean) * channels if len(mean) == 1 else list(mean)
        std = list(std) * channels if len(std) == 1 else list(std)
        if len(mean) != channels:  # e.g. ImageNet stats with 1-channel input: use their average
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


HEAD_POOLS = ("avg", "max", "avgmax")


class Head(nn.Module):
    """Global pool -> Linear(hidden) -> ReLU -> Dropout -> Linear(classes).

    ``pool`` is ``avg``, ``max`` (a focal finding is not diluted by the rest of the slice)
    or ``avgmax`` (both, concatenated).
    """

    def __init__(
        self, in_features: int, hidden: int, dropout: float, classes: int, pool: str = "avg"
    ) -> None:
        super().__init__()
        self.pool = pool
        self.fc1 = nn.Linear(in_features * (2 if pool == "avgmax" else 1), hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            flat = x.flatten(2)
            pooled = []
            if self.pool in ("avg", "avgmax"):
                pooled.append(flat.mean(dim=2))
            if self.pool in ("max", "avgmax"):
                pooled.append(flat.amax(dim=2))
            x = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]
        return self.fc2(self.drop(self.act(self.fc1(x))))


AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary losses are added with weight 0.3 (Szegedy 2014)


class TransferModel(nn.Module):
    """normalize -> body (backbone up to the connection node) -> head.

    ``aux_heads`` (GoogLeNet deep supervision) read intermediate nodes of the trainable
    part during training only; inference uses the main head alone.
    """

    def __init__(
        self,
        normalize: Normalize,
        body: nn.Module,
        head: Head,
        aux_heads: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.head = head
        self.aux_heads = nn.ModuleDict(aux_heads or {})
        self.frozen_modules: list[str] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))[FEATURES_KEY]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_supervised(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[main logits, aux logits...] for the training loss."""
        out = self.body(self.normalize(x))
        return [self.head(out[FEATURES_KEY])] + [h(out[k]) for k, h in self.aux_heads.items()]

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        modules = dict(self.body.named_modules())
        for name in self.frozen_modules:
            modules[name].eval()
        return self

    def frozen_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if not p.requires_grad}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _graph(module: nn.Module) -> fx.Graph:
    # create_feature_extractor returns a DualGraphModule when train and eval graphs differ
    return getattr(module, "eval_graph", None) or module.graph


def _output_node(graph: fx.Graph, key: str) -> fx.Node:
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    return output[key] if key in output else output[FEATURES_KEY]  # nodes "same": one output


def ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def cut_backbone(
    backbone: nn.Module, finetune_node: str, connection_node: str, aux_nodes: Sequence[str] = ()
) -> fx.GraphModule:
    """The backbone up to ``connection_node``; returns ``{finetune, features, aux<i>}``."""
    backbone.eval()
    nodes = {node: f"aux{i}" for i, node in enumerate(aux_nodes)}
    nodes |= {finetune_node: FINETUNE_KEY, connection_node: FEATURES_KEY}  # same node: features
    return create_feature_extractor(backbone, return_nodes=nodes, suppress_diff_warning=True)


def frozen_module_names(body: fx.GraphModule) -> list[str]:
    """Modules that compute the fine-tuning node's tensor (it included)."""
    target = _output_node(_graph(body), FINETUNE_KEY)
    names = {n.target for n in ancestors(target) | {target} if n.op == "call_module"}
    return sorted(str(name) for name in names)


def freeze(model: TransferModel) -> list[str]:
    """Freeze every module and attribute the fine-tuning node depends on; returns their names."""
    body = model.body
    graph = _graph(body)
    target = _output_node(graph, FINETUNE_KEY)
    upstream = ancestors(target) | {target}
    names = frozen_module_names(body)
    modules = dict(body.named_modules())
    for name in names:
        for param in modules[name].parameters():
            param.requires_grad_(False)
    for node in upstream:
        if node.op == "get_attr":
            attr = body.get_parameter(node.target) if _is_param(body, node.target) else None
            if attr is not None:
                attr.requires_grad_(False)
    model.frozen_modules = names
    model.train(model.training)
    return names


def _is_param(module: nn.Module, target: str) -> bool:
    try:
        module.get_parameter(target)
    except AttributeError:
        return False
    return True


def split_prefix(body: fx.GraphModule) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """Split the body into (prefix -> finetune tensor, suffix: finetune tensor -> features).

    Returns None when the part after the fine-tuning node also reads other frozen
    intermediates (then the prefix output alone cannot be cached). Both halves share the
    body's modules, so they compute exactly what the body computes.
    """
    graph = _graph(body)
    target = _output_node(graph, FINETUNE_KEY)
    features = _output_node(graph, FEATURES_KEY)
    upstream = ancestors(target)

    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in upstream or node is target:
            env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(env[target])

    suffix = fx.Graph()
    env = {target: suffix.placeholder("finetune_value")}
    needed = ancestors(features) | {features}
    for node in graph.nodes:
        if node in env or node not in needed or node.op == "output":
            continue
        if node in upstream:
            if node.op != "get_attr":
                continue  # computed before the fine-tuning node; only reachable via inputs
            env[node] = suffix.node_copy(node, lambda n: env[n])
            continue
        if any(arg in upstream and arg not in env for arg in node.all_input_nodes):
            return None
        env[node] = suffix.node_copy(node, lambda n: env[n])
    suffix.output(env[features])
    return fx.GraphModule(body, prefix), fx.GraphModule(body, suffix)


@torch.no_grad()
def output_shape(module: nn.Module, in_chans: int, size: int, key: str) -> tuple[int, ...]:
    was_training = module.training
    module.eval()
    shape = tuple(module(torch.zeros(1, in_chans, size, size))[key].shape[1:])
    module.train(was_training)
    return shape


def build_transfer_model(
    backbone: nn.Module,
    finetune_node: str,
    connection_node: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    size: int,
    hidden: int,
    dropout: float,
    classes: int = 2,
    pool: str = "avg",
    aux_nodes: Sequence[str] = (),
    freeze_prefix: bool = True,
) -> TransferModel:
    """Cut ``backbone``, attach a fresh head and freeze up to ``finetune_node`` (unless
    ``freeze_prefix`` is false: then every layer trains, the "no freezing" ablation).

    ``aux_nodes`` (nodes between the two nodes) get GoogLeNet-style auxiliary classifiers
    (4x4 average pool, 1x1 conv 128, FC 1024, dropout 0.7, FC classes) for deep supervision.
    """
    body = cut_backbone(backbone, finetune_node, connection_node, aux_nodes)
    shape = output_shape(body, in_chans, size, FEATURES_KEY)
    head = Head(shape[0], hidden, dropout, classes, pool)
    aux_heads = {}
    for i in range(len(aux_nodes)):
        from torchvision.models.googlenet import InceptionAux

        channels = output_shape(body, in_chans, size, f"aux{i}")[0]
        aux_heads[f"aux{i}"] = InceptionAux(channels, classes, dropout=0.7)
    model = TransferModel(Normalize(mean, std, in_chans), body, head, aux_heads)
    if freeze_prefix:
        freeze(model)
    return model
