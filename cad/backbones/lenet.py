"""LeNet-5 (LeCun et al. 1998), the first convolutional network for digit recognition."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cad.backbones.registry import UNIT_MEAN, UNIT_STD, BackboneSpec, register


def _conv_tanh(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(conv=nn.Conv2d(in_chans, out_chans, kernel_size=5), act=nn.Tanh())
    )


class LeNet5(nn.Module):
    """C1-S2-C3-S4-C5-F6-output on 32x32 inputs, tanh units, average-pool subsampling.

    Simplified as usual: C3 connects to all six S2 maps (not the paper's sparse table),
    S2/S4 are plain average pools and the RBF output layer is a linear layer. C5 is
    followed by a global average pool, the identity at 32x32, so larger inputs also run.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = _conv_tanh(in_chans, 6)  # 32 -> 28
        self.s2 = nn.AvgPool2d(2)  # 28 -> 14
        self.c3 = _conv_tanh(6, 16)  # 14 -> 10
        self.s4 = nn.AvgPool2d(2)  # 10 -> 5
        self.c5 = _conv_tanh(16, 120)  # 5 -> 1
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.f6 = nn.Sequential(OrderedDict(fc=nn.Linear(120, 84), act=nn.Tanh()))
        self.output = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s4(self.c3(self.s2(self.c1(x))))
        x = torch.flatten(self.pool(self.c5(x)), 1)
        return self.output(self.f6(x))


register(
    BackboneSpec(
        name="lenet5",
        family="lenet",
        source="cad",
        builder=LeNet5,
        nodes=("s2", "s4", "c5.act", "f6.act"),
        node_depths=(1, 2, 3, 4),
        input_size=32,
        min_size=32,
        in_chans=1,
        mean=UNIT_MEAN,
        std=UNIT_STD,
        weights=None,
        description="LeNet-5 (LeCun 1998): C1-S2-C3-S4-C5-F6, tanh, 32x32 input",
    )
)
