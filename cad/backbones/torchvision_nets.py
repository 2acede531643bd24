"""Classic ImageNet CNNs from torchvision, with their candidate nodes.

Nodes are stage outputs: the stem, every conv block / Inception block / dense block and
transition / group of inverted residual blocks, and the ReLU outputs of fc6/fc7 where the
design has them. Weights are the torchvision enum names; mean/std are ImageNet's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torchvision.models as tvm
from torch import nn

from cad.backbones._adapt import adapt_first_conv
from cad.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, register

# keep the auxiliary heads (their weights are in the checkpoints); explicit init_weights
# silences torchvision's FutureWarning about the default initialisation
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": True, "init_weights": True},
    "inception_v3": {"aux_logits": True, "init_weights": True},
}


def _builder(fn_name: str) -> Callable[[int], nn.Module]:
    """A builder(in_chans) for torchvision's ``fn_name`` with random weights."""
    kwargs = _EXTRA_KWARGS.get(fn_name, {})

    def build(in_chans: int = 3) -> nn.Module:
        model = getattr(tvm, fn_name)(weights=None, **kwargs)
        return adapt_first_conv(model, in_chans) if in_chans != 3 else model

    build.__name__ = build.__qualname__ = f"build_{fn_name}"
    return build


def _tv(
    name: str,
    family: str,
    nodes: Sequence[str],
    depths: Sequence[int],
    weights: str,
    description: str,
    *,
    fn_name: str | None = None,
    input_size: int = 224,
    min_size: int = 32,
    aux_nodes: tuple[str, ...] = (),
) -> BackboneSpec:
    return register(
        BackboneSpec(
            name=name,
            family=family,
            source="torchvision",
            builder=_builder(fn_name or name),
            nodes=tuple(nodes),
            node_depths=tuple(depths),
            input_size=input_size,
            min_size=min_size,
            in_chans=3,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            weights=weights,
            aux_nodes=aux_nodes,
            description=description,
        )
    )


# AlexNet: conv1/conv2 (after overlapping max-pool), conv3, conv4, conv5 (pooled), fc6, fc7.
_tv(
    "alexnet",
    "alexnet",
    ["features.2", "features.5", "features.7", "features.9", "features.12"]
    + ["classifier.2", "classifier.5"],
    range(1, 8),
    "AlexNet_Weights.IMAGENET1K_V1",
    "AlexNet (Krizhevsky 2012): 5 conv + 3 FC, ReLU, overlapping pooling, dropout",
    min_size=63,
)

# VGG: convs per block for configurations A (11), B (13), D (16), E (19).
_VGG_BLOCKS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def _vgg_nodes(blocks: Sequence[int], bn: bool) -> tuple[list[str], list[int]]:
    """pool1..pool5 (indices into ``features``) and fc6/fc7 (ReLU after classifier.0/.3)."""
    per_conv = 3 if bn else 2
    index, convs, nodes, depths = -1, 0, [], []
    for n in blocks:
        index += n * per_conv + 1
        convs += n
        nodes.append(f"features.{index}")
        depths.append(convs)
    return nodes + ["classifier.1", "classifier.4"], depths + [convs + 1, convs + 2]


for _depth, _blocks in _VGG_BLOCKS.items():
    for _bn in (False, True):
        _name = f"vgg{_depth}" + ("_bn" if _bn else "")
        _tv(
            _name,
            "vgg",
            *_vgg_nodes(_blocks, _bn),
            f"VGG{_depth}" + ("_BN" if _bn else "") + "_Weights.IMAGENET1K_V1",
            f"VGG-{_depth} (Simonyan 2014): stacked 3x3 convs, 5 pooled blocks, fc6/fc7"
            + (", batch norm" if _bn else ""),
        )

# GoogLeNet (Inception v1): the two auxiliary classifiers hang off inception4a and 4d.
_GOOGLENET_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
_tv(
    "googlenet",
    "inception",
    ["maxpool1", "maxpool2"] + [f"inception{b}.cat" for b in _GOOGLENET_BLOCKS],
    [1, 3] + [3 + 6 * i for i in range(1, 10)],
    "GoogLeNet_Weights.IMAGENET1K_V1",
    "GoogLeNet / Inception v1 (Szegedy 2014): 9 Inception modules, 2 auxiliary heads",
    min_size=32,
    aux_nodes=("inception4a.cat", "inception4d.cat"),
)

# Inception v3: the stem, then every Mixed block (7b/7c end in their third concat).
_tv(
    "inception_v3",
    "inception",
    ["maxpool1", "maxpool2"]
    + [f"Mixed_{b}.cat" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a")]
    + ["Mixed_7b.cat_2", "Mixed_7c.cat_2"],
    (3, 5, 12, 19, 26, 30, 40, 50, 60, 70, 76, 85, 94),
    "Inception_V3_Weights.IMAGENET1K_V1",
    "Inception v3 (Szegedy 2015): factorised convolutions, 11 Mixed blocks",
    input_size=299,
    min_size=75,
)

# ResNet: blocks per stage; Bottleneck stages end in relu_2, BasicBlock stages in relu_1.
_RESNETS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


def _resnet_nodes(
    bottleneck: bool, blocks: Sequence[int], every_block: bool
) -> tuple[list[str], list[int]]:
    """The stem output and the end of each stage (or of every residual block)."""
    last = "relu_2" if bottleneck else "relu_1"
    nodes, depths, depth = ["maxpool"], [1], 1
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            depth += 3 if bottleneck else 2
            if block == 0 and (bottleneck or stage > 1):
                depth += 1  # projection shortcut
            if every_block or block == count - 1:
                nodes.append(f"layer{stage}.{block}.{last}")
                depths.append(depth)
    return nodes, depths


for _depth, (_bottleneck, _blocks) in _RESNETS.items():
    _tv(
        f"resnet{_depth}",
        "resnet",
        *_resnet_nodes(_bottleneck, _blocks, every_block=False),
        f"ResNet{_depth}_Weights.IMAGENET1K_" + ("V2" if _bottleneck else "V1"),
        f"ResNet-{_depth} (He 2015): residual learning; nodes: stem and layer1..layer4",
    )
_tv(
    "resnet50_blocks",
    "resnet",
    *_resnet_nodes(True, _RESNETS[50][1], every_block=True),
    "ResNet50_Weights.IMAGENET1K_V2",
    "ResNet-50 with every bottleneck block as a candidate node",
    fn_name="resnet50",
)

# DenseNet: the stem, every dense block and transition, and the final BN-ReLU.
_DENSENETS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


def _densenet_nodes(layers: Sequence[int]) -> tuple[list[str], list[int]]:
    nodes, depths, depth = ["features.pool0"], [1], 1
    for i, count in enumerate(layers, start=1):
        depth += 2 * count
        if i < len(layers):
            nodes += [f"features.denseblock{i}.cat", f"features.transition{i}.pool"]
            depths += [depth, depth + 1]
            depth += 1
    return nodes + ["relu"], depths + [depth]


for _depth, _layers in _DENSENETS.items():
    _tv(
        f"densenet{_depth}",
        "densenet",
        *_densenet_nodes(_layers),
        f"DenseNet{_depth}_Weights.IMAGENET1K_V1",
        f"DenseNet-{_depth} (Huang 2016): dense connectivity; nodes: blocks and transitions",
    )

# MobileNets: the stem, the end of every group of inverted residual blocks, the last conv.
_tv(
    "mobilenet_v2",
    "mobilenet",
    ["features.0", "features.1.conv.2"]
    + [f"features.{i}.add" for i in (3, 6, 10, 13, 16)]
    + ["features.17.conv.3", "features.18"],
    (1, 3, 9, 18, 30, 39, 48, 51, 52),
    "MobileNet_V2_Weights.IMAGENET1K_V2",
    "MobileNet V2 (Sandler 2018): inverted residual blocks with linear bottlenecks",
)
_tv(
    "mobilenet_v3_large",
    "mobilenet",
    ["features.0"] + [f"features.{i}.add" for i in (1, 3, 6, 10, 12, 15)] + ["features.16"],
    (1, 3, 9, 24, 36, 46, 61, 62),
    "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
    "MobileNet V3 large (Howard 2019): inverted residuals, squeeze-excitation, h-swish",
)
_tv(
    "mobilenet_v3_small",
    "mobilenet",
    ["features.0", "features.1.block.2"]
    + [f"features.{i}.add" for i in (3, 6, 8, 11)]
    + ["features.12"],
    (1, 5, 11, 26, 36, 51, 52),
    "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
    "MobileNet V3 small (Howard 2019)",
)
