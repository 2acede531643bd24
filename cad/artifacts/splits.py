"""Patient-level train / validation / test assignment and the CV folds inside train."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from cad.artifacts.base import Artifact, read_model, write_model

if TYPE_CHECKING:
    from cad.data.samples import Sample


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

    def sample_folds(self, samples: Sequence[Sample]) -> np.ndarray:
        """The CV fold of each sample, by its patient; only training patients have one, so
        a sample of a validation or test patient is a KeyError, never a silent fold."""
        return np.array([self.folds[s.patient] for s in samples], dtype=np.int64)


class Splits(Artifact):
    kind = "splits"
    FILE = "splits.json"

    def assignment(self) -> SplitAssignment:
        return read_model(SplitAssignment, self.path / self.FILE)

    @classmethod
    def write(cls, out: Path, assignment: SplitAssignment) -> None:
        write_model(assignment, out / cls.FILE)
