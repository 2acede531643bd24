"""Patient-level train / validation / test assignment and the CV folds inside train."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from cad.artifacts.base import Artifact, read_model, write_model


class SplitSize(BaseModel):
    patients: int
    samples: int
    positives: int


class SplitAssignment(BaseModel):
    """Pseudonymous patient keys per split; ``folds`` maps each training patient to its fold."""

    train: list[str]
    val: list[str]
    test: list[str]
    folds: dict[str, int]
    sizes: dict[str, SplitSize]

    def patients(self, split: str) -> list[str]:
        return list(getattr(self, split))


class Splits(Artifact):
    kind = "splits"
    FILE = "splits.json"

    def assignment(self) -> SplitAssignment:
        return read_model(SplitAssignment, self.path / self.FILE)

    @classmethod
    def write(cls, out: Path, assignment: SplitAssignment) -> None:
        write_model(assignment, out / cls.FILE)
