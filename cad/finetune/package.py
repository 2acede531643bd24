"""Saving and loading a network as a model package (files: :mod:`cad.artifacts.model_package`).

Loading verifies the checksums before anything is deserialised, rebuilds the architecture
from ``model.json`` and loads the safetensors weights strictly. No pickle.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_model, save_model

from cad.artifacts.model_package import (
    DENOISER,
    WEIGHTS,
    ModelMeta,
    read_meta,
    read_sums,
    verify_package,
    write_package_files,
)
from cad.config import InputConfig
from cad.errors import ModelPackageError
from cad.finetune.model import TransferModel, build_transfer_model


@dataclass
class LoadedModel:
    model: TransferModel
    meta: ModelMeta
    denoiser: Any = None  # a DnCNN when the package was trained on denoised slices

    def prepare_images(self, images: np.ndarray) -> np.ndarray:
        """What the network expects from preprocessed slices (applies the denoiser if any)."""
        if self.denoiser is None:
            return images
        from cad.backbones.dncnn import denoise

        return denoise(self.denoiser, images)

    def calibrate(self, prob: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (the package's fitted calibration; raw when it has none)."""
        calibration = self.meta.calibration
        return prob if calibration is None else calibration.apply(prob)

    @property
    def input_spec(self) -> InputConfig:
        return self.meta.input

    @property
    def threshold(self) -> float:
        return self.meta.threshold


def save_package(
    model: TransferModel,
    meta: ModelMeta,
    directory: Path,
    denoiser: Path | None = None,
    card: str | None = None,
) -> Path:
    """Write the package into ``directory`` (which must be inside an atomic artifact)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    if denoiser is not None:
        shutil.copy(denoiser, directory / DENOISER)
    write_package_files(directory, meta, card)
    return directory


def publish_package(source: Path, directory: Path, card: str) -> Path:
    """A verified copy of the package at ``source`` in ``directory`` with ``card`` as its
    model card (weights hard-linked where the file system allows, else copied)."""
    verify_package(source)
    meta = read_meta(source)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, DENOISER) if meta.denoiser else (WEIGHTS,):
        try:
            os.link(source / name, directory / name)
        except OSError:  # another file system, or links unsupported
            shutil.copy2(source / name, directory / name)
    write_package_files(directory, meta, card)
    return directory


def rebuild(meta: ModelMeta) -> TransferModel:
    """An untrained network with the package's architecture (random weights)."""
    from cad.backbones import create_backbone

    backbone = create_backbone(meta.backbone, weights="random", in_chans=meta.in_chans)
    return build_transfer_model(
        backbone.model,
        meta.nodes.finetune,
        meta.nodes.connection,
        mean=meta.mean,
        std=meta.std,
        in_chans=meta.in_chans,
        size=meta.input.size,
        hidden=meta.head.hidden,
        dropout=meta.head.dropout,
        pool=meta.head.pool,
        classes=len(meta.classes),
        aux_nodes=meta.aux_nodes,
        freeze_prefix=meta.frozen,
    )


def load_package(directory: str | Path) -> LoadedModel:
    """Verify and load a model package (safetensors only; nothing is unpickled)."""
    directory = Path(directory)
    verify_package(directory)
    meta = read_meta(directory)
    model = rebuild(meta)
    try:
        load_model(model, str(directory / WEIGHTS), strict=True)
    except RuntimeError as exc:
        raise ModelPackageError(
            f"{WEIGHTS} does not fit the architecture in model.json: {exc}"
        ) from None
    model.eval()
    denoiser = None
    if meta.denoiser is not None:
        from cad.backbones.dncnn import DnCNN

        if DENOISER not in read_sums(directory):
            raise ModelPackageError(f"model.json names a denoiser but SHA256SUMS lacks {DENOISER}")
        spec = meta.denoiser
        denoiser = DnCNN(spec.in_chans, spec.depth, spec.features)
        load_model(denoiser, str(directory / DENOISER), strict=True)
        denoiser.eval()
    return LoadedModel(model, meta, denoiser)
