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
    method: str  # e.g. "shapes-1", "shapes-1+contrastive-1": the source(s) and versions
    key: str  # the content key of the cache entry
    steps: int
    batch_size: int
    size: int
    classes: int  # shapes: the source's classes; contrastive: the candidates of each view
    # on the task over the last steps (chance 1/classes); contrastive: views matched
    source_accuracy: float
    loss: list[float]
    precision: str
    seed: int
    wall_s: float
    sha256: str
    start: PretrainRecord | None = None  # the weights a contrastive phase started from

    @property
    def learned(self) -> bool:
        """Whether the source task was learned at all: accuracy at least twice chance."""
        return self.source_accuracy >= 2.0 / self.classes

    @property
    def label(self) -> str:
        """One line for tables and tags, e.g. ``pretrain:shapes-1 300 steps (source acc
        0.41)`` or ``pretrain:shapes-1+contrastive-1 300+200 steps (source acc 0.23, views
        matched 0.61)``."""
        last = self.method.rsplit("+", 1)[-1]
        what = "views matched" if last.startswith("contrastive") else "source acc"
        acc = f"{what} {self.source_accuracy:.2f}" + ("" if self.learned else ", NOT LEARNED")
        if self.start is None:
            return f"pretrain:{self.method} {self.steps} steps ({acc})"
        first = self.start.label.split(" (", 1)[1].rstrip(")")
        return f"pretrain:{self.method} {self.start.steps}+{self.steps} steps ({first}, {acc})"


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
