"""The backbone registry: one frozen :class:`BackboneSpec` per network, looked up by name.

A spec says how to build the network with random weights, which ImageNet weights fit it
(and the normalisation those weights expect), and which points of its torch.fx graph are
candidate nodes for the layer probe. Family modules register their specs on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from torch import nn

from cad.errors import CadError, look_up_option

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INCEPTION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INCEPTION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
UNIT_MEAN: tuple[float] = (0.5,)
UNIT_STD: tuple[float] = (0.5,)

Source = Literal["torchvision", "timm", "cad"]
_SOURCES = ("torchvision", "timm", "cad")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything cad needs to know about one backbone.

    ``nodes`` are exact fx node names of the eval-mode graph (as listed by
    ``torchvision.models.feature_extraction.get_graph_node_names(model)[1]``), ordered
    shallow to deep; each yields a ``(B, C, H, W)`` or ``(B, F)`` tensor. ``node_depths``
    counts the weight layers (conv/linear) executed up to and including each node, in
    graph order: a strictly increasing measure of depth for plots and tie-breaks.
    ``min_size`` is the smallest square input that runs, or the total stride of the
    network when that is larger (below it the deepest stages no longer downsample).
    ``mean``/``std`` fit the pretrained weights; a 1-tuple applies to every channel.
    """

    name: str
    family: str
    source: Source
    builder: Callable[[int], nn.Module]
    nodes: tuple[str, ...]
    node_depths: tuple[int, ...]
    input_size: int
    min_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str | None
    aux_nodes: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        where = f"backbone spec '{self.name}'"
        look_up_option(self.source, _SOURCES, f"source in {where}")
        if not self.nodes:
            raise CadError(f"{where} declares no candidate nodes")
        if len(self.nodes) != len(self.node_depths):
            raise CadError(
                f"{where}: {len(self.nodes)} nodes but {len(self.node_depths)} node_depths"
            )
        if len(set(self.nodes)) != len(self.nodes):
            raise CadError(f"{where}: duplicate candidate nodes")
        if any(b <= a for a, b in pairwise(self.node_depths)):
            raise CadError(f"{where}: node_depths must increase strictly, got {self.node_depths}")
        if not 1 <= self.min_size <= self.input_size:
            raise CadError(f"{where}: need 1 <= min_size <= input_size")
        if self.in_chans < 1 or len(self.mean) != len(self.std):
            raise CadError(f"{where}: bad in_chans or mean/std")


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry; a name is never overwritten (raises CadError)."""
    if spec.name in _REGISTRY:
        raise CadError(
            f"backbone '{spec.name}' is already registered "
            f"(by {_REGISTRY[spec.name].family}); choose another name"
        )
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    """Return the spec registered as ``name``; unknown names suggest the closest one."""
    return _REGISTRY[look_up_option(name, _REGISTRY, "backbone")]


def list_specs() -> list[BackboneSpec]:
    """All registered specs, in registration order (families grouped)."""
    return list(_REGISTRY.values())
