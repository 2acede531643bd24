"""The pipeline graph, declared once.

``STAGES`` lists every kind of stage in execution order (the CLI's ``--force`` choices, the
README's stage table and the end-to-end test's expectations come from it). ``build_graph``
turns a config into nodes: the data chain once (twice when round 1 has its own manifest),
then per backbone and round the chain extract -> probe -> finetune -> evaluate, the unit
that runs on its own (``Graph.only``) or fans out over an executor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cad.artifacts.checksums import sha256_file
from cad.config import BackboneConfig, PipelineConfig, path_digest
from cad.errors import ConfigError, did_you_mean
from cad.pipeline.stage import Settings, Stage
from cad.pipeline.stages.data import (
    IngestSettings,
    IngestStage,
    ManifestSettings,
    ManifestStage,
    PhantomSettings,
    PhantomStage,
    SplitSettings,
    SplitStage,
)
from cad.pipeline.stages.evaluation import EvaluateSettings, EvaluateStage
from cad.pipeline.stages.layers import ExtractSettings, ExtractStage, ProbeSettings, ProbeStage
from cad.pipeline.stages.prepare import AugmentSettings, AugmentStage, DenoiseSettings, DenoiseStage
from cad.pipeline.stages.pretrain import PretrainSettings, PretrainStage
from cad.pipeline.stages.training import FinetuneSettings, FinetuneStage

PHANTOM, MANIFEST, INGEST, SPLIT = PhantomStage(), ManifestStage(), IngestStage(), SplitStage()
DENOISE, AUGMENT, PRETRAIN = DenoiseStage(), AugmentStage(), PretrainStage()
EXTRACT, PROBE, FINETUNE, EVALUATE = ExtractStage(), ProbeStage(), FinetuneStage(), EvaluateStage()
STAGES: tuple[Stage, ...] = (
    PHANTOM, MANIFEST, INGEST, SPLIT, DENOISE, AUGMENT,
    PRETRAIN, EXTRACT, PROBE, FINETUNE, EVALUATE,
)  # fmt: skip
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
CHAIN_STAGES: tuple[str, ...] = (
    PRETRAIN.name, EXTRACT.name, PROBE.name, FINETUNE.name, EVALUATE.name,
)  # fmt: skip


def stage_table() -> str:
    """The README's stage table, made from ``STAGES`` (a test keeps the README in step)."""
    rows = [f"| `{stage.name}` | {stage.summary} |" for stage in STAGES]
    return "\n".join(
        ["| stage | what it writes (one artifact directory each) |", "|---|---|", *rows]
    )


@dataclass(frozen=True)
class ChainId:
    """One backbone and transfer round: the unit of work after the data stages."""

    backbone: str
    round: int

    def __str__(self) -> str:
        return f"{self.backbone}:{self.round}"

    @property
    def title(self) -> str:
        return f"{self.backbone} round {self.round}"


@dataclass(frozen=True, eq=False)
class Node:
    """One stage in the graph with its settings and the nodes it reads."""

    stage: Stage
    settings: Settings
    inputs: Mapping[str, Node]
    label: str
    chain: ChainId | None = None


@dataclass(frozen=True)
class DataNodes:
    """The data chain: ``images`` is what networks train on (ingest, or its denoised copy);
    ``ingest`` is what scoring sees (the model package carries the denoiser)."""

    ingest: Node
    split: Node
    images: Node
    augment: Node
    manifest: Node | None  # the manifest stage's node (phantom), else None
    manifest_digest: str  # SHA-256 of a user's manifest file ("" for the phantom)


@dataclass(frozen=True)
class ChainNodes:
    chain: ChainId
    extract: Node
    probe: Node
    finetune: Node
    evaluate: Node
    pretrain: Node | None = None  # round 1 with weights from cad's offline source

    @property
    def nodes(self) -> tuple[Node, ...]:
        first = (self.pretrain,) if self.pretrain is not None else ()
        return (*first, self.extract, self.probe, self.finetune, self.evaluate)


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    data: DataNodes | None = None
    chains: list[ChainNodes] = field(default_factory=list)

    def add(
        self,
        stage: Stage,
        settings: Settings,
        inputs: Mapping[str, Node | None] | None = None,
        chain: ChainId | None = None,
    ) -> Node:
        given = {k: v for k, v in (inputs or {}).items() if v is not None}
        missing = set(stage.inputs) - set(given) - stage.optional_inputs
        unknown = set(given) - set(stage.inputs)
        if missing or unknown or not isinstance(settings, stage.settings_type):
            raise TypeError(f"stage {stage.name}: inputs {sorted(given)} or settings do not fit")
        label = f"{stage.name}[{chain.backbone} r{chain.round}]" if chain else stage.name
        node = Node(stage, settings, given, label, chain)
        self.nodes.append(node)
        return node

    def only(self, wanted: list[ChainId]) -> Graph:
        """The subgraph that computes ``wanted`` chains (and what they read)."""
        keep: list[ChainNodes] = [c for c in self.chains if c.chain in wanted]
        needed: set[int] = set()

        def visit(node: Node) -> None:
            if id(node) not in needed:
                needed.add(id(node))
                for parent in node.inputs.values():
                    visit(parent)

        for chain in keep:
            visit(chain.evaluate)
        nodes = [n for n in self.nodes if id(n) in needed]
        return Graph(nodes, self.data, keep)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)


def _data_chain(
    graph: Graph, cfg: PipelineConfig, fingerprint: str, manifest: str | None, root: str | None
) -> DataNodes:
    ingest_cfg = {"input": cfg.input, "ingest": cfg.ingest, "secret_fingerprint": fingerprint}
    if manifest is None:
        archive = graph.add(PHANTOM, PhantomSettings(phantom=cfg.data.phantom))
        made = graph.add(MANIFEST, ManifestSettings(margin=cfg.data.margin), {"archive": archive})
        ingest = graph.add(
            INGEST, IngestSettings(**ingest_cfg), {"manifest": made, "archive": archive}
        )
        digest = ""
    else:
        manifest_path = Path(manifest)
        if not manifest_path.is_file():
            raise ConfigError(
                f"data.manifest: no manifest file at {manifest}; build one with "
                "`cad data manifest` (see data_manifests/README.md)"
            )
        if root is None:
            raise ConfigError(
                "data.root: a manifest's paths are relative to a data root; set "
                "data.root (or --set data.root=DIR)"
            )
        digest = sha256_file(manifest_path)
        settings = IngestSettings(
            **ingest_cfg,
            manifest_sha256=digest,
            root_digest=path_digest(str(Path(root).resolve())),
            manifest=manifest_path,
            root=Path(root),
        )
        ingest = graph.add(INGEST, settings)
        made = None
    split = graph.add(SPLIT, SplitSettings(split=cfg.split), {"images": ingest})
    images = ingest
    if cfg.denoise.enabled:
        denoise = DenoiseSettings(denoise=cfg.denoise)
        images = graph.add(DENOISE, denoise, {"images": ingest, "splits": split})
    augment = graph.add(
        AUGMENT,
        AugmentSettings(augment=cfg.augment, balance=cfg.balance),
        {"images": images, "splits": split},
    )
    return DataNodes(ingest, split, images, augment, made, digest)


def needs_pretrain(backbone: BackboneConfig) -> bool:
    """Whether round 1 of ``backbone`` reads the pretrain stage: ``weights: pretrain``, or
    ``fallback: pretrain`` with its weights unavailable on this machine."""
    from cad.backbones import check_weights

    if backbone.weights == "pretrain":
        return True
    return backbone.fallback == "pretrain" and bool(check_weights(backbone.name, backbone.weights))


def _model_chain(
    graph: Graph,
    cfg: PipelineConfig,
    backbone: BackboneConfig,
    round_: int,
    train: DataNodes,
    test: DataNodes,
    previous: Node | None,
) -> ChainNodes:
    chain = ChainId(backbone.name, round_)
    pretrain = None
    if previous is None and needs_pretrain(backbone):
        in_chans = cfg.input.in_chans
        settings = PretrainSettings(
            backbone=backbone.name, in_chans=in_chans, pretrain=cfg.pretrain
        )
        slices = cfg.pretrain.uses_slices  # contrastive: the training patients' pixels
        inputs = {"images": train.images, "splits": train.split} if slices else {}
        pretrain = graph.add(PRETRAIN, settings, inputs, chain)
    extract = graph.add(
        EXTRACT,
        ExtractSettings(backbone=backbone, round=round_, extract=cfg.extract),
        {"training": train.augment, "previous": previous, "pretrained": pretrain},
        chain,
    )
    probe = graph.add(
        PROBE,
        ProbeSettings(probe=cfg.probe, balance=cfg.balance, title=chain.title),
        {"features": extract, "training": train.augment, "splits": train.split},
        chain,
    )
    finetune = graph.add(
        FINETUNE,
        FinetuneSettings(backbone=backbone, round=round_, finetune=cfg.finetune, title=chain.title),
        {
            "probe": probe,
            "features": extract,
            "training": train.augment,
            "images": train.images,
            "splits": train.split,
            "previous": previous,
            "pretrained": pretrain,
        },
        chain,
    )
    evaluate = graph.add(
        EVALUATE,
        EvaluateSettings(evaluate=cfg.evaluate, title=chain.title),
        {"model": finetune, "images": test.ingest, "splits": test.split},
        chain,
    )
    return ChainNodes(chain, extract, probe, finetune, evaluate, pretrain)


def build_graph(cfg: PipelineConfig, secret_fingerprint: str) -> Graph:
    """Every node of the pipeline ``cfg`` describes, in execution order."""
    graph = Graph()
    target = _data_chain(graph, cfg, secret_fingerprint, cfg.data.manifest, cfg.data.root)
    first = target
    if cfg.transfer.rounds == 2 and cfg.transfer.round1_manifest:
        root = cfg.transfer.round1_root or cfg.data.root
        first = _data_chain(graph, cfg, secret_fingerprint, cfg.transfer.round1_manifest, root)
    graph.data = target
    for backbone in cfg.backbones:
        r1 = _model_chain(graph, cfg, backbone, 1, first, target, None)
        graph.chains.append(r1)
        if cfg.transfer.rounds == 2:
            r2 = _model_chain(graph, cfg, backbone, 2, target, target, r1.finetune)
            graph.chains.append(r2)
    return graph


def parse_chains(values: list[str], cfg: PipelineConfig) -> list[ChainId]:
    """``BACKBONE[:ROUND]`` selections (``--only``) checked against the config."""
    names = [b.name for b in cfg.backbones]
    rounds = list(range(1, cfg.transfer.rounds + 1))
    out: list[ChainId] = []
    for value in values:
        name, _, round_text = value.partition(":")
        if name not in names:
            raise ConfigError(f"--only: backbone '{name}' is not in this pipeline;"
                              f"{did_you_mean(name, names)}")  # fmt: skip
        if round_text and (not round_text.isdigit() or int(round_text) not in rounds):
            raise ConfigError(f"--only {value}: this pipeline runs rounds {rounds}")
        out += [ChainId(name, r) for r in ([int(round_text)] if round_text else rounds)]
    return out
