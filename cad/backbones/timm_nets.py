"""CNNs torchvision lacks, from timm: Inception v4, Inception-ResNet-v2, SE-ResNet.

``weights`` is the Hugging Face repo id of the timm pretrained tag; mean/std and input
size follow timm's pretrained config for that tag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cad.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    BackboneSpec,
    register,
)


def _builder(arch: str) -> Callable[[int], nn.Module]:
    """A builder(in_chans) for timm's ``arch`` with random weights."""

    def build(in_chans: int = 3) -> nn.Module:
        import timm  # lazily: importing cad.backbones stays cheap

        return timm.create_model(arch, pretrained=False, in_chans=in_chans)

    build.__name__ = build.__qualname__ = f"build_{arch}"
    return build


def _timm(
    name: str,
    family: str,
    tag: str,
    nodes: Sequence[str],
    depths: Sequence[int],
    description: str,
    *,
    inception_norm: bool,
    input_size: int,
    min_size: int,
) -> BackboneSpec:
    return register(
        BackboneSpec(
            name=name,
            family=family,
            source="timm",
            builder=_builder(name),
            nodes=tuple(nodes),
            node_depths=tuple(depths),
            input_size=input_size,
            min_size=min_size,
            in_chans=3,
            mean=INCEPTION_MEAN if inception_norm else IMAGENET_MEAN,
            std=INCEPTION_STD if inception_norm else IMAGENET_STD,
            weights=f"timm/{name}.{tag}",
            description=description,
        )
    )


# Inception v4: stem (features.0-5), 4 Inception-A, Reduction-A, 7 Inception-B,
# Reduction-B, 3 Inception-C (which end in their third concat).
_timm(
    "inception_v4",
    "inception",
    "tf_in1k",
    ["features.2.bn.act"]
    + [f"features.{i}.cat" for i in range(3, 19)]
    + [f"features.{i}.cat_2" for i in (19, 20, 21)],
    (3, 4, 10, 11, 18, 25, 32, 39, 43, 53, 63, 73, 83, 93, 103, 113, 119, 129, 139, 149),
    "Inception v4 (Szegedy 2016): uniform Inception-A/B/C blocks with reduction blocks",
    inception_norm=True,
    input_size=299,
    min_size=75,
)

# Inception-ResNet-v2: the stem, every 5th residual Inception block, the reductions.
_timm(
    "inception_resnet_v2",
    "inception",
    "tf_in1k",
    ["maxpool_3a", "maxpool_5a", "mixed_5b.cat", "repeat.4.act", "repeat.9.act"]
    + ["mixed_6a.cat", "repeat_1.9.act", "repeat_1.19.act", "mixed_7a.cat"]
    + ["repeat_2.8.relu", "conv2d_7b.bn.act"],
    (3, 5, 12, 47, 82, 86, 136, 186, 193, 238, 244),
    "Inception-ResNet-v2 (Szegedy 2016): Inception blocks with residual connections",
    inception_norm=True,
    input_size=299,
    min_size=75,
)

# SE-ResNet-50: ResNet-50 with squeeze-and-excitation in every bottleneck.
_timm(
    "seresnet50",
    "senet",
    "a1_in1k",
    ["maxpool", "layer1.2.act3", "layer2.3.act3", "layer3.5.act3", "layer4.2.act3"],
    (1, 17, 38, 69, 85),
    "SE-ResNet-50 (Hu 2017): channel attention by squeeze-and-excitation",
    inception_norm=False,
    input_size=224,
    min_size=32,
)
