"""The model package: ``model.safetensors`` + ``model.json`` + ``SHA256SUMS``. No pickle.

``model.json`` says how to rebuild the network (backbone, both nodes, head), how to prepare
its input (phases/channels, normalisation, size), the classes and the decision threshold
chosen on validation. Loading verifies the checksums before anything is deserialised.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_model, save_model

from cad import __version__
from cad.config import InputConfig
from cad.errors import ModelPackageError
from cad.finetune.model import TransferModel, build_transfer_model
from cad.pipeline.store import sha256_file

WEIGHTS = "model.safetensors"
DENOISER = "denoiser.safetensors"
META = "model.json"
SUMS = "SHA256SUMS"
FORMAT = "cad-model/1"


@dataclass
class LoadedModel:
    model: TransferModel
    meta: dict[str, Any]
    denoiser: Any = None  # a DnCNN when the package was trained on denoised slices

    def prepare_images(self, images: np.ndarray) -> np.ndarray:
        """What the network expects from preprocessed slices (applies the denoiser if any)."""
        if self.denoiser is None:
            return images
        from cad.backbones.dncnn import denoise

        return denoise(self.denoiser, images)

    @property
    def input_spec(self) -> InputConfig:
        return InputConfig.model_validate(self.meta["input"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def _files(meta: dict[str, Any]) -> tuple[str, ...]:
    return (WEIGHTS, META, DENOISER) if meta.get("denoiser") else (WEIGHTS, META)


def save_package(
    model: TransferModel, meta: dict[str, Any], directory: Path, denoiser: Path | None = None
) -> Path:
    """Write the package into ``directory`` (which must be inside an atomic artifact)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    if denoiser is not None:
        shutil.copy(denoiser, directory / DENOISER)
    meta = {"format": FORMAT, "cad_version": __version__, **meta}
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    sums = "".join(f"{sha256_file(directory / name)}  {name}\n" for name in _files(meta))
    (directory / SUMS).write_text(sums)
    return directory


def verify_package(directory: Path) -> None:
    """Raise ModelPackageError unless every file is present and matches SHA256SUMS."""
    directory = Path(directory)
    for name in (WEIGHTS, META, SUMS):
        if not (directory / name).is_file():
            raise ModelPackageError(
                f"model package is missing {name}; a package is the 'model' directory that "
                "`cad run` writes (model.safetensors, model.json, SHA256SUMS)"
            )
    expected = {}
    for line in (directory / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name.strip()] = digest.strip()
    names = [n for n in expected if n in (WEIGHTS, META, DENOISER)]
    if WEIGHTS not in names or META not in names:
        raise ModelPackageError(f"{SUMS} does not list {WEIGHTS} and {META}")
    for name in names:
        if not (directory / name).is_file():
            raise ModelPackageError(f"model package is missing {name} (listed in {SUMS})")
        if expected.get(name) != sha256_file(directory / name):
            raise ModelPackageError(
                f"model package file {name} does not match its SHA-256 in {SUMS}: the package "
                "was modified or damaged; re-export it from the run that produced it"
            )


def read_meta(directory: Path) -> dict[str, Any]:
    meta = json.loads((Path(directory) / META).read_text())
    if meta.get("format") != FORMAT:
        raise ModelPackageError(f"{META} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def rebuild(meta: dict[str, Any]) -> TransferModel:
    """An untrained network with the package's architecture (random weights)."""
    from cad.backbones import create_backbone

    backbone = create_backbone(meta["backbone"], weights="random", in_chans=meta["in_chans"])
    return build_transfer_model(
        backbone.model,
        meta["nodes"]["finetune"],
        meta["nodes"]["connection"],
        mean=meta["mean"],
        std=meta["std"],
        in_chans=meta["in_chans"],
        size=meta["input"]["size"],
        hidden=meta["head"]["hidden"],
        dropout=meta["head"]["dropout"],
        classes=len(meta["classes"]),
        aux_nodes=meta.get("aux_nodes", ()),
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
            f"{WEIGHTS} does not fit the architecture in {META}: {exc}"
        ) from exc
    model.eval()
    denoiser = None
    if meta.get("denoiser"):
        from cad.backbones.dncnn import DnCNN

        spec = meta["denoiser"]
        if DENOISER not in (directory / SUMS).read_text():
            raise ModelPackageError(f"model.json names a denoiser but {SUMS} does not list it")
        denoiser = DnCNN(spec["in_chans"], spec["depth"], spec["features"])
        load_model(denoiser, str(directory / DENOISER), strict=True)
        denoiser.eval()
    return LoadedModel(model, meta, denoiser)
