"""Backbones: the registry, ImageNet CNNs from torchvision/timm, the classic nets written here.

Importing this package registers every backbone. ``get_spec(name)`` gives the candidate
nodes, input size and normalisation; ``create_backbone(name, weights, in_chans)`` builds
the network. DnCNN (a denoiser, not a classifier) lives in ``cad.backbones.dncnn``.
"""

# each family module registers its specs on import; this order is list_specs()'s order
# isort: off
from cad.backbones import torchvision_nets, timm_nets  # noqa: F401
from cad.backbones import lenet, zfnet, nin, mobilenet_v1, hybridsn  # noqa: F401

# isort: on
from cad.backbones.dncnn import DnCNN, denoise, train_dncnn
from cad.backbones.registry import BackboneSpec, get_spec, list_specs, register
from cad.backbones.weights import (
    LoadedBackbone,
    WeightsLocation,
    check_weights,
    create_backbone,
    describe,
    node_shapes,
    weights_location,
)

__all__ = [
    "BackboneSpec",
    "DnCNN",
    "LoadedBackbone",
    "WeightsLocation",
    "check_weights",
    "create_backbone",
    "denoise",
    "describe",
    "get_spec",
    "list_specs",
    "node_shapes",
    "register",
    "train_dncnn",
    "weights_location",
]
