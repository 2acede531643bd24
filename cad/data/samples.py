"""The sample table that travels with cached images: pseudonymous keys and labels only."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One slice of one study; every identifier is a keyed pseudonym."""

    sample: str
    patient: str
    study: str
    series: str
    slice: int
    label: int


def write_samples(samples: list[Sample], path: Path) -> None:
    names = [f.name for f in fields(Sample)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)


def read_samples(path: Path) -> list[Sample]:
    with open(path, newline="") as handle:
        return [
            Sample(
                r["sample"], r["patient"], r["study"], r["series"], int(r["slice"]), int(r["label"])
            )
            for r in csv.DictReader(handle)
        ]


def column(samples: list[Sample], name: str) -> np.ndarray:
    return np.asarray([getattr(s, name) for s in samples])
