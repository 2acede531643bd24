"""The layer probe's result: every candidate node's CV F1 and the chosen fine-tuning node."""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel

from cad.artifacts.base import Artifact, read_model, write_model


class LayerScore(BaseModel):
    node: str
    depth: int
    dim: int
    f1_mean: float
    f1_std: float
    fold_f1: list[float]


class ProbeChoice(BaseModel):
    """The fine-tuning node and the chance levels its F1 is read against."""

    finetune: str
    finetune_f1: float
    prevalence: float  # positive share of the training samples the probe scored
    chance_f1_all_positive: float  # F1 of predicting "positive" for every slice: 2p/(1+p)
    chance_f1_prevalence: float  # F1 of guessing positive with probability p: p


class ProbeResult(Artifact):
    kind = "probe"
    SCORES = "layer_scores.csv"
    CHOICE = "choice.json"
    PLOT = "layer_f1.png"

    def scores(self) -> list[LayerScore]:
        with open(self.path / self.SCORES, newline="") as handle:
            return [
                LayerScore(
                    node=r["node"],
                    depth=int(r["depth"]),
                    dim=int(r["dim"]),
                    f1_mean=float(r["f1_mean"]),
                    f1_std=float(r["f1_std"]),
                    fold_f1=[float(v) for v in r["fold_f1"].split()],
                )
                for r in csv.DictReader(handle)
            ]

    def choice(self) -> ProbeChoice:
        return read_model(ProbeChoice, self.path / self.CHOICE)

    @property
    def plot(self) -> Path:
        return self.path / self.PLOT

    @classmethod
    def plot_in(cls, out: Path) -> Path:
        return out / cls.PLOT

    @classmethod
    def write(cls, out: Path, scores: list[LayerScore], choice: ProbeChoice) -> None:
        with open(out / cls.SCORES, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(LayerScore.model_fields))
            writer.writeheader()
            for s in scores:
                row = s.model_dump()
                row["fold_f1"] = " ".join(f"{v:.4f}" for v in s.fold_f1)
                writer.writerow(row)
        write_model(choice, out / cls.CHOICE)
