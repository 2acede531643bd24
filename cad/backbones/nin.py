"""Network in Network (Lin, Chen & Yan 2013): mlpconv layers and global average pooling."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cad.backbones.registry import UNIT_MEAN, UNIT_STD, BackboneSpec, register


def mlpconv(in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A k x k conv followed by two 1x1 convs (a per-pixel MLP), each with ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2),
            relu0=nn.ReLU(),
            cccp1=nn.Conv2d(out_chans, out_chans, 1),
            relu1=nn.ReLU(),
            cccp2=nn.Conv2d(out_chans, out_chans, 1),
            relu2=nn.ReLU(),
        )
    )


class NIN(nn.Module):
    """The ImageNet NIN: four mlpconv layers; the last maps to one map per class.

    There is no fully connected layer: global average pooling of the class maps gives
    the logits. Pools are 3x3 stride 2 with ceil mode (as in Caffe), and dropout follows
    the third pool. The first conv is 11x11 stride 4 without padding, as in the paper.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.mlpconv1 = mlpconv(in_chans, 96, 11, stride=4)
        self.mlpconv1.conv.padding = (0, 0)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.mlpconv2 = mlpconv(96, 256, 5)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.mlpconv3 = mlpconv(256, 384, 3)
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.drop = nn.Dropout(dropout)
        self.mlpconv4 = mlpconv(384, 1024, 3)
        self.mlpconv4.cccp2 = nn.Conv2d(1024, num_classes, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.mlpconv1(x))
        x = self.pool2(self.mlpconv2(x))
        x = self.drop(self.pool3(self.mlpconv3(x)))
        return torch.flatten(self.gap(self.mlpconv4(x)), 1)


register(
    BackboneSpec(
        name="nin",
        family="nin",
        source="cad",
        builder=NIN,
        nodes=("pool1", "pool2", "pool3", "mlpconv4.relu0", "mlpconv4.relu1"),
        node_depths=(3, 6, 9, 10, 11),
        input_size=224,
        min_size=39,
        in_chans=3,
        mean=UNIT_MEAN,
        std=UNIT_STD,
        weights=None,
        description="Network in Network (Lin 2013): 4 mlpconv layers, global average pooling",
    )
)
