"""The model package: ``model.safetensors`` + ``model.json`` + ``SHA256SUMS``. No pickle.

``model.json`` is a versioned :class:`ModelMeta`: how to rebuild the network (backbone, both
nodes, head), how to prepare its input (phases/channels, normalisation, size), the classes
and the decision threshold chosen on validation. Older schema versions are migrated on read.
This module owns the package's files; :mod:`cad.finetune.package` builds networks from it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cad import __version__
from cad.artifacts.base import Artifact
from cad.artifacts.checksums import sha256_file
from cad.config import InputConfig
from cad.errors import ModelPackageError

WEIGHTS = "model.safetensors"
DENOISER = "denoiser.safetensors"
META = "model.json"
SUMS = "SHA256SUMS"
CARD = "model_card.md"  # written by cad.artifacts.model_card
FORMAT = "cad-model"
SCHEMA_VERSION = 2


class Nodes(BaseModel):
    finetune: str
    connection: str


CALIBRATION_EPS = 1e-6


class HeadSpec(BaseModel):
    hidden: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    pool: Literal["avg", "max", "avgmax"] = "avg"


class Calibration(BaseModel):
    """How raw probabilities become calibrated ones: ``method`` temperature (one number)
    or isotonic (the fitted step function's knots)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str
    temperature: float = 1.0
    knots_x: list[float] = []
    knots_y: list[float] = []

    def apply(self, prob: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(prob, dtype=np.float64), CALIBRATION_EPS, 1 - CALIBRATION_EPS)
        if self.method == "temperature":
            out = 1 / (1 + np.exp(-np.log(p / (1 - p)) / self.temperature))
        elif self.method == "isotonic":
            out = np.interp(p, self.knots_x, self.knots_y)
        else:
            out = p
        return out.astype(np.float32)


class DenoiserSpec(BaseModel):
    in_chans: int
    depth: int
    features: int
    sigma: float


class ModelMeta(BaseModel):
    """Everything needed to rebuild, feed and read a trained network."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["cad-model"] = "cad-model"
    schema_version: Literal[2] = 2
    cad_version: str = __version__
    backbone: str
    round: int = Field(ge=1)
    weights_source: str
    nodes: Nodes
    aux_nodes: list[str] = []
    frozen: bool = True  # whether the modules up to the fine-tuning node were frozen
    head: HeadSpec
    classes: list[str]
    in_chans: int = Field(ge=1)
    input: InputConfig
    mean: list[float]
    std: list[float]
    threshold: float = Field(ge=0, le=1)
    training_data_hash: str
    connection_shape: list[int]
    frozen_modules: int
    trainable_params: int
    frozen_params: int
    best_epoch: int
    best_val_f1: float
    denoiser: DenoiserSpec | None = None
    calibration: Calibration | None = None  # fitted on the validation patients; None: raw

    @field_validator("classes")
    @classmethod
    def _two_or_more(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError("a classifier needs at least two classes")
        return value

    @property
    def fell_back_to_random(self) -> bool:
        return self.weights_source.startswith("random") and "fallback" in self.weights_source

    @property
    def pretrained_offline(self) -> bool:
        """The weights came from cad's offline source (``weights``/``fallback: pretrain``)."""
        return "pretrain:" in self.weights_source


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Upgrade an older ``model.json`` mapping to the current schema, step by step."""
    data = dict(raw)
    if data.get("format") == "cad-model/1":  # schema 1: the format string carried the version
        data["format"], data["schema_version"] = FORMAT, 1
    version = data.get("schema_version")
    if data.get("format") != FORMAT or not isinstance(version, int):
        raise ModelPackageError(
            f"{META} is not a cad model description (format {data.get('format')!r}); a "
            "package is the 'model' directory that `cad run` writes"
        )
    if version > SCHEMA_VERSION:
        raise ModelPackageError(
            f"{META} has schema version {version}, newer than this cad reads "
            f"({SCHEMA_VERSION}); upgrade cad to use this model"
        )
    if version == 1:  # 2 added 'frozen' (every schema-1 model was frozen) and the version key
        data.setdefault("frozen", True)
        data["schema_version"] = 2
    return data


def _package_files(directory: Path, meta: ModelMeta) -> tuple[str, ...]:
    names = (WEIGHTS, META, DENOISER) if meta.denoiser else (WEIGHTS, META)
    return (*names, CARD) if (directory / CARD).is_file() else names


def read_sums(directory: Path) -> dict[str, str]:
    expected = {}
    for line in (directory / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name.strip()] = digest.strip()
    return expected


def verify_package(directory: Path) -> None:
    """Raise ModelPackageError unless every file is present and matches SHA256SUMS."""
    directory = Path(directory)
    for name in (WEIGHTS, META, SUMS):
        if not (directory / name).is_file():
            raise ModelPackageError(
                f"model package is missing {name}; a package is the 'model' directory that "
                "`cad run` writes (model.safetensors, model.json, SHA256SUMS)"
            )
    expected = read_sums(directory)
    names = [n for n in expected if n in (WEIGHTS, META, DENOISER, CARD)]
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


def read_meta(directory: Path) -> ModelMeta:
    """The validated (and migrated) ``model.json`` of a package directory."""
    try:
        raw = json.loads((Path(directory) / META).read_text())
    except (OSError, ValueError) as exc:
        raise ModelPackageError(f"{META} cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ModelPackageError(f"{META} must hold a JSON object")
    try:
        meta = ModelMeta.model_validate(migrate(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelPackageError(
            f"{META}: {where}: {first['msg']}; the package is damaged or was edited by hand; "
            "re-export it from the run that produced it"
        ) from None
    if not math.isfinite(meta.threshold):
        raise ModelPackageError(f"{META}: threshold is not a finite number")
    return meta


def write_package_files(directory: Path, meta: ModelMeta, card: str | None = None) -> None:
    """Write ``model.json``, the model card (if given) and ``SHA256SUMS`` next to weights
    already in ``directory``."""
    (directory / META).write_text(meta.model_dump_json(indent=2) + "\n")
    if card is not None:
        (directory / CARD).write_text(card)
    sums = "".join(f"{sha256_file(directory / n)}  {n}\n" for n in _package_files(directory, meta))
    (directory / SUMS).write_text(sums)


def read_card(directory: Path) -> str | None:
    """The package's verified model card (None for a package written before cards)."""
    if CARD not in read_sums(Path(directory)):
        return None
    return (Path(directory) / CARD).read_text()


class TrainedModel(Artifact):
    """The finetune stage's output: the model package, the epoch history and its plot."""

    kind = "trained-model"
    PACKAGE = "model"
    HISTORY = "history.csv"
    CURVES = "training_curves.png"

    @property
    def package(self) -> Path:
        return self.path / self.PACKAGE

    def model_meta(self) -> ModelMeta:
        return read_meta(self.package)

    def history(self) -> list[dict[str, float]]:
        with open(self.path / self.HISTORY, newline="") as handle:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    @staticmethod
    def write_history(history: list[dict[str, float]], path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @classmethod
    def files_in(cls, out: Path) -> tuple[Path, Path, Path]:
        """(package directory, history CSV, curves plot) inside a stage's output directory."""
        return out / cls.PACKAGE, out / cls.HISTORY, out / cls.CURVES
