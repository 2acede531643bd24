"""MobileNet V1 (Howard et al. 2017): depthwise separable convolutions, width multiplier."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cad.backbones.registry import UNIT_MEAN, UNIT_STD, BackboneSpec, register

# (output channels, stride) of the 13 depthwise separable blocks (ImageNet design)
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5
_BLOCKS += ((1024, 2), (1024, 1))


def _width(channels: int, width_mult: float) -> int:
    """Scale a channel count by the width multiplier, kept a multiple of 8 (>= 8)."""
    return max(8, int(channels * width_mult + 4) // 8 * 8)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (spatial filtering) then 1x1 pointwise conv (channel mixing)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_chans, in_chans, 3, stride, 1, groups=in_chans, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.act1 = nn.ReLU()
        self.pw = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.pw(self.act1(self.bn1(self.dw(x))))))


class MobileNetV1(nn.Module):
    """A 3x3 stride-2 stem, 13 depthwise separable blocks, global pool, one FC layer."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        chans = _width(32, width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, chans, 3, 2, 1, bias=False), nn.BatchNorm2d(chans), nn.ReLU()
        )
        blocks = []
        for out, stride in _BLOCKS:
            blocks.append(DepthwiseSeparable(chans, _width(out, width_mult), stride))
            chans = _width(out, width_mult)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(chans, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.blocks(self.stem(x))), 1)
        return self.fc(self.drop(x))


# the stem and the last block at each resolution (112, 56, 28, 14, 7 at 224x224)
_NODES = ("stem.2", "blocks.0.act2", "blocks.2.act2", "blocks.4.act2")
_NODES += ("blocks.10.act2", "blocks.12.act2")
for _name, _mult in (("mobilenet_v1", 1.0), ("mobilenet_v1_050", 0.5)):
    register(
        BackboneSpec(
            name=_name,
            family="mobilenet",
            source="cad",
            builder=partial(MobileNetV1, width_mult=_mult),
            nodes=_NODES,
            node_depths=(1, 3, 7, 11, 23, 27),
            input_size=224,
            min_size=32,
            in_chans=3,
            mean=UNIT_MEAN,
            std=UNIT_STD,
            weights=None,
            description=f"MobileNet V1 (Howard 2017): depthwise separable convs, width x{_mult}",
        )
    )
