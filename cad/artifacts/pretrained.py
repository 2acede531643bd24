"""Pretrained backbone weights from cad's offline source: the weights file and its record.

The same two files make an entry of the user-level weights cache and the ``pretrain``
stage's artifact: ``weights.safetensors`` (the registry network's state dict, strict keys)
and ``pretrain.json`` (:class:`PretrainRecord`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cad.artifacts.base import Artifact, read_model, write_model

WEIGHTS = "weights.safetensors"
RECORD = "pretrain.json"


class PretrainRecord(BaseModel):
    """How the weights were made; ``sha256`` is the weights file's checksum."""

    model_config = ConfigDict(extra="forbid")

    backbone: str
    in_chans: int
    method: str  # e.g. "shapes-1": the source and its rendering version
    key: str  # the content key of the cache entry
    steps: int
    batch_size: int
    size: int
    classes: int
    source_accuracy: float  # on the source task over the last steps (chance 1/classes)
    loss: list[float]
    precision: str
    seed: int
    wall_s: float
    sha256: str

    @property
    def learned(self) -> bool:
        """Whether the source task was learned at all: accuracy at least twice chance."""
        return self.source_accuracy >= 2.0 / self.classes

    @property
    def label(self) -> str:
        """One line for tables and tags, e.g. ``pretrain:shapes-1 300 steps (acc 0.41)``."""
        acc = f"source acc {self.source_accuracy:.2f}" + ("" if self.learned else ", NOT LEARNED")
        return f"pretrain:{self.method} {self.steps} steps ({acc})"


def read_record(directory: Path) -> PretrainRecord:
    return read_model(PretrainRecord, directory / RECORD)


def write_record(directory: Path, record: PretrainRecord) -> None:
    write_model(record, directory / RECORD)


class PretrainedWeights(Artifact):
    kind = "pretrained"

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    def record(self) -> PretrainRecord:
        return read_record(self.path)
