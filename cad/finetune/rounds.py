"""Twice transfer: rebuild the backbone from a round-1 model package for round 2."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from cad.artifacts.model_package import WEIGHTS, ModelMeta, read_meta, verify_package
from cad.backbones import create_backbone
from cad.errors import ModelPackageError


def backbone_from_package(directory: Path) -> tuple[nn.Module, ModelMeta, dict]:
    """The full backbone with round 1's weights up to its connection node.

    Returns (backbone, round-1 meta, round-1 head state). Layers beyond round 1's cut were
    discarded by round 1, so they keep their random initialisation; round 2 only considers
    candidate nodes up to round 1's connection node.
    """
    verify_package(directory)
    meta = read_meta(directory)
    state = load_file(str(Path(directory) / WEIGHTS))
    loaded = create_backbone(meta.backbone, weights="random", in_chans=meta.in_chans)
    body = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    result = loaded.model.load_state_dict(body, strict=False)
    if result.unexpected_keys:
        raise ModelPackageError(
            f"round-1 package does not fit backbone {meta.backbone}: unexpected keys "
            f"{result.unexpected_keys[:3]}"
        )
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    return loaded.model, meta, head
