"""ZF-Net (Zeiler & Fergus 2013): AlexNet with a smaller, denser first layer."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cad.backbones.registry import UNIT_MEAN, UNIT_STD, BackboneSpec, register


class ZFNet(nn.Module):
    """7x7 stride-2 first conv and 5x5 stride-2 second conv (AlexNet: 11x11/4 and 5x5/1).

    Layer sizes follow the paper's figure at 224x224 (110 -> 55 -> 26 -> 13 -> 6), with
    contrast normalisation after the first two pooled layers. An adaptive 6x6 average
    pool before fc6 lets small inputs through.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_chans, 96, kernel_size=7, stride=2, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(3, stride=2, padding=1),
                norm1=nn.LocalResponseNorm(5),
                conv2=nn.Conv2d(96, 256, kernel_size=5, stride=2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(3, stride=2, padding=1),
                norm2=nn.LocalResponseNorm(5),
                conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1),
                relu4=nn.ReLU(),
                conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1),
                relu5=nn.ReLU(),
                pool5=nn.MaxPool2d(3, stride=2),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(256 * 6 * 6, 4096),
                relu6=nn.ReLU(),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(4096, 4096),
                relu7=nn.ReLU(),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(4096, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


register(
    BackboneSpec(
        name="zfnet",
        family="alexnet",
        source="cad",
        builder=ZFNet,
        nodes=("features.norm1", "features.norm2", "features.relu3", "features.relu4")
        + ("features.pool5", "classifier.relu6", "classifier.relu7"),
        node_depths=(1, 2, 3, 4, 5, 6, 7),
        input_size=224,
        min_size=53,
        in_chans=3,
        mean=UNIT_MEAN,
        std=UNIT_STD,
        weights=None,
        description="ZF-Net (Zeiler & Fergus 2013): 7x7/2 first conv, AlexNet-like",
    )
)
