"""HybridSN (Roy et al. 2019): 3-D convolutions over (slices, H, W), then a 2-D convolution.

Built for hyperspectral patches (30 PCA bands, 25x25); here the input channels (DCE
phases or neighbouring slices) play the role of the spectral depth.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cad.backbones.registry import UNIT_MEAN, UNIT_STD, BackboneSpec, register

_DEPTH_KERNELS = (7, 5, 3)  # the paper's 3-D kernels are 7x3x3, 5x3x3, 3x3x3
_FILTERS_3D = (8, 16, 32)


def depth_kernels(in_chans: int) -> tuple[tuple[int, ...], int]:
    """Depth kernels clamped to the remaining depth, and the depth left after them."""
    kernels, depth = [], in_chans
    for k in _DEPTH_KERNELS:
        k = min(k, depth)
        kernels.append(k)
        depth -= k - 1
    return tuple(kernels), depth


class HybridSN(nn.Module):
    """(B, C, H, W) -> (B, 1, C, H, W) -> three 3-D convs -> (B, 32*D', H', W') -> 2-D conv
    -> FC 256 -> FC 128 -> classes, ReLU throughout, dropout 0.4 after each hidden FC.

    Depth kernels are clamped so that few channels work (C=30 gives the paper's shapes,
    C=3 a 3x3x3 first kernel). An adaptive pool to the paper's 17x17 before the first FC
    (the identity at 25x25) lets any input size >= 9 through.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 16, dropout: float = 0.4):
        super().__init__()
        kernels, depth = depth_kernels(in_chans)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        chans = 1
        for i, (k, out) in enumerate(zip(kernels, _FILTERS_3D, strict=True), start=1):
            layers[f"conv{i}"] = nn.Conv3d(chans, out, (k, 3, 3))
            layers[f"relu{i}"] = nn.ReLU()
            chans = out
        self.conv3d = nn.Sequential(layers)
        self.to_2d = nn.Flatten(1, 2)
        self.conv2d = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(chans * depth, 64, 3), relu=nn.ReLU())
        )
        self.pool = nn.AdaptiveAvgPool2d(17)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(
            OrderedDict(fc=nn.Linear(64 * 17 * 17, 256), relu=nn.ReLU(), drop=nn.Dropout(dropout))
        )
        self.fc2 = nn.Sequential(
            OrderedDict(fc=nn.Linear(256, 128), relu=nn.ReLU(), drop=nn.Dropout(dropout))
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_2d(self.conv3d(x.unsqueeze(1)))
        x = self.flatten(self.pool(self.conv2d(x)))
        return self.head(self.fc2(self.fc1(x)))


register(
    BackboneSpec(
        name="hybridsn",
        family="hybridsn",
        source="cad",
        builder=HybridSN,
        nodes=("to_2d", "conv2d.relu", "fc1.relu", "fc2.relu"),
        node_depths=(3, 4, 5, 6),
        input_size=25,
        min_size=9,
        in_chans=3,
        mean=UNIT_MEAN,
        std=UNIT_STD,
        weights=None,
        description="HybridSN (Roy 2019): 3-D convs over slices x H x W, then 2-D conv, FC",
    )
)
