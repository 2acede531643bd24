"""Pooled features of every candidate node, one matrix per node, and what made them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from cad.artifacts.base import Artifact, read_model, write_model


class NodeInfo(BaseModel):
    node: str
    depth: int  # weight layers executed up to the node (registry's node_depths)
    shape: list[int]  # per-sample output shape before pooling

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))


class FeatureIndex(BaseModel):
    nodes: list[NodeInfo]
    weights_source: str
    runtime: str


class FeatureSet(Artifact):
    kind = "features"
    INDEX = "nodes.json"
    FOLDER = "features"

    def index(self) -> FeatureIndex:
        return read_model(FeatureIndex, self.path / self.INDEX)

    def load(self, nodes: list[str] | None = None) -> dict[str, np.ndarray]:
        """``{node: (N, D) float32}`` memory-mapped; every node when ``nodes`` is None."""
        names = nodes or [n.node for n in self.index().nodes]
        return {n: np.load(self.path / self.FOLDER / _file(n), mmap_mode="r") for n in names}

    @classmethod
    def write(cls, out: Path, features: dict[str, np.ndarray], index: FeatureIndex) -> None:
        folder = out / cls.FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for node, matrix in features.items():
            np.save(folder / _file(node), np.asarray(matrix, dtype=np.float32))
        write_model(index, out / cls.INDEX)


def _file(node: str) -> str:
    return f"{node.replace('/', '_')}.npy"  # node names contain dots, never path separators
