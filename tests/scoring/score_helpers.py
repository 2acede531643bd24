"""Constants and builders shared by the ``cad score`` tests (a uniquely named module, so
that test files can import it whatever other ``conftest`` modules are loaded)."""

from __future__ import annotations

import torch

from cad.artifacts.model_package import HeadSpec, ModelMeta, Nodes
from cad.backbones import create_backbone, get_spec
from cad.config import InputConfig
from cad.finetune.model import TransferModel, build_transfer_model

SECRET = "scoring-test-secret-" + "0" * 32
SIZE = 48
SLICES = 10
PATIENTS = 4  # the last one loses its post-contrast series: missing-phase
NODES = {"finetune": "layer2.1.relu_1", "connection": "layer3.1.relu_1"}


def make_model(seed: int = 0) -> TransferModel:
    """A resnet18 transfer model with random weights (reproducible for one seed)."""
    torch.manual_seed(seed)
    spec = get_spec("resnet18")
    backbone = create_backbone("resnet18", "random", 3).model
    return build_transfer_model(
        backbone,
        NODES["finetune"],
        NODES["connection"],
        mean=spec.mean,
        std=spec.std,
        in_chans=3,
        size=SIZE,
        hidden=16,
        dropout=0.1,
    ).eval()


def package_meta(threshold: float, **changes) -> ModelMeta:
    """What the finetune stage writes into model.json (the fields scoring reads)."""
    spec = get_spec("resnet18")
    meta = ModelMeta(
        backbone="resnet18",
        round=1,
        weights_source="random",
        nodes=Nodes(**NODES),
        head=HeadSpec(hidden=16, dropout=0.1),
        classes=["non-tumour", "tumour"],
        in_chans=3,
        input=InputConfig(size=SIZE),
        mean=list(spec.mean),
        std=list(spec.std),
        threshold=threshold,
        training_data_hash="test",
        connection_shape=[256, 3, 3],
        frozen_modules=0,
        trainable_params=0,
        frozen_params=0,
        best_epoch=1,
        best_val_f1=0.0,
    )
    return meta.model_copy(update=changes)
