"""What a run hands back: the graph's artifacts, typed, by data chain and by model chain."""

from __future__ import annotations

from dataclasses import dataclass, field

from cad.artifacts.archive import ManifestFile
from cad.artifacts.base import Artifact
from cad.artifacts.checksums import sha256_file
from cad.artifacts.evaluation import Evaluation
from cad.artifacts.features import FeatureSet
from cad.artifacts.images import DenoisedImages, ImageSet, TrainingSet
from cad.artifacts.model_package import TrainedModel
from cad.artifacts.pretrained import PretrainedWeights
from cad.artifacts.probe import ProbeResult
from cad.artifacts.splits import Splits
from cad.artifacts.summary import RunDir, RunSummary, StageRecord
from cad.config import PipelineConfig
from cad.pipeline.graph import ChainId, ChainNodes, DataNodes, Graph, Node


@dataclass(frozen=True)
class DataArtifacts:
    ingest: ImageSet  # decoded slices as read from DICOM (what scoring sees)
    split: Splits
    images: ImageSet  # what the networks train on: ingest, or its denoised copy
    augment: TrainingSet
    manifest_hash: str

    @property
    def denoise(self) -> DenoisedImages | None:
        return self.images if isinstance(self.images, DenoisedImages) else None


@dataclass(frozen=True)
class ChainArtifacts:
    chain: ChainId
    extract: FeatureSet
    probe: ProbeResult
    finetune: TrainedModel
    evaluate: Evaluation
    pretrained: PretrainedWeights | None = None  # round 1 with cad's offline weights

    @property
    def backbone(self) -> str:
        return self.chain.backbone

    @property
    def round(self) -> int:
        return self.chain.round


def collect(graph: Graph, results: dict[Node, Artifact]) -> tuple[DataArtifacts, list]:
    """The data artifacts and one :class:`ChainArtifacts` per chain of ``graph``."""
    data = graph.data
    assert data is not None
    typed = DataArtifacts(
        ingest=results[data.ingest],  # type: ignore[arg-type]
        split=results[data.split],  # type: ignore[arg-type]
        images=results[data.images],  # type: ignore[arg-type]
        augment=results[data.augment],  # type: ignore[arg-type]
        manifest_hash=_manifest_hash(data, results),
    )
    chains = [_chain(c, results) for c in graph.chains]
    return typed, chains


def _manifest_hash(data: DataNodes, results: dict[Node, Artifact]) -> str:
    """First 16 hex digits of the manifest CSV's SHA-256 (the phantom's, or the user's)."""
    if data.manifest is not None:
        return sha256_file(ManifestFile.view(results[data.manifest]).csv)[:16]
    return data.manifest_digest[:16]


def _chain(nodes: ChainNodes, results: dict[Node, Artifact]) -> ChainArtifacts:
    return ChainArtifacts(
        nodes.chain,
        results[nodes.extract],  # type: ignore[arg-type]
        results[nodes.probe],  # type: ignore[arg-type]
        results[nodes.finetune],  # type: ignore[arg-type]
        results[nodes.evaluate],  # type: ignore[arg-type]
        None if nodes.pretrain is None else results[nodes.pretrain],  # type: ignore[arg-type]
    )


@dataclass
class RunResult:
    workdir: RunDir
    config: PipelineConfig
    graph: Graph
    data: DataArtifacts
    chains: list[ChainArtifacts]
    records: list[StageRecord]
    summary: RunSummary | None = field(default=None)
