"""The Python API: what the CLI, tests and notebooks call.

``run_pipeline`` wires the stages: data (phantom/manifest -> ingest -> split -> augment),
then per backbone and round the chain extract -> probe -> finetune -> evaluate, then the
report and MLflow logging. Every stage is cached by content key, so a rerun reuses what is
finished and redoes only what a config change touched.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cad.config import PipelineConfig, dump_config
from cad.errors import ConfigError
from cad.phi import Pseudonymizer, load_secret
from cad.pipeline import data_stages as ds
from cad.pipeline import model_stages as ms
from cad.pipeline.runner import StageRunner
from cad.pipeline.store import Artifact, ArtifactStore, artifact_key, sha256_file

log = logging.getLogger("cad")


@dataclass
class DataChain:
    ingest: Artifact  # decoded slices as read from DICOM (what scoring sees)
    split: Artifact
    augment: Artifact
    manifest_hash: str
    images: Artifact  # what the networks train on: ingest, or its denoised copy
    denoise: Artifact | None = None


@dataclass
class ChainResult:
    backbone: str
    round: int
    extract: Artifact
    probe: Artifact
    finetune: Artifact
    evaluate: Artifact


@dataclass
class RunResult:
    workdir: Path
    config: PipelineConfig
    data: DataChain
    chains: list[ChainResult]
    runner: StageRunner
    summary: dict = field(default_factory=dict)


def _data_chain(
    runner: StageRunner,
    cfg: PipelineConfig,
    workdir: Path,
    secret: bytes,
    manifest: str | None,
    root: str | None,
) -> DataChain:
    fingerprint = Pseudonymizer(secret).key("secret", "fingerprint")
    if manifest is None:
        phantom = runner.run(
            "phantom", cfg.section("data")["phantom"], {}, lambda out: ds.phantom_stage(out, cfg)
        )
        made = runner.run(
            "manifest",
            {"margin": cfg.data.margin},
            {"phantom": phantom},
            lambda out: ds.phantom_manifest_stage(out, phantom, cfg.data.margin),
        )
        manifest_path, root_path = made.file("manifest.csv"), phantom.path / "dicom"
        inputs = {"manifest": made}
        source = {"manifest": "phantom"}
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
        root_path = Path(root)
        inputs = {}
        source = {"manifest_sha256": sha256_file(manifest_path), "root": str(root_path.resolve())}
    manifest_hash = sha256_file(manifest_path)[:16]
    ingest = runner.run(
        "ingest",
        {"input": cfg.section("input"), "secret": fingerprint, **source},
        inputs,
        lambda out: ds.ingest_stage(out, manifest_path, root_path, cfg, secret),
    )
    split = runner.run(
        "split",
        cfg.section("split"),
        {"ingest": ingest},
        lambda out: ds.split_stage(out, ingest, cfg),
    )
    images, denoise = ingest, None
    if cfg.denoise.enabled:
        denoise = runner.run(
            "denoise",
            cfg.section("denoise"),
            {"ingest": ingest, "split": split},
            lambda out: ds.denoise_stage(out, ingest, split, cfg),
        )
        images = denoise
    augment = runner.run(
        "augment",
        {"balance": cfg.section("balance"), "augment": cfg.section("augment")},
        {"ingest": images, "split": split},
        lambda out: ds.augment_stage(out, images, split, cfg),
    )
    return DataChain(ingest, split, augment, manifest_hash, images, denoise)


def _model_chain(
    runner: StageRunner,
    cfg: PipelineConfig,
    workdir: Path,
    source: ms.Source,
    train: DataChain,
    test: DataChain,
) -> ChainResult:
    name, r = source.backbone.name, source.round
    title = f"{name} round {r}"
    prev = {"previous": source.previous} if source.previous is not None else {}
    backbone_cfg = source.backbone.model_dump(mode="json")
    extract = runner.run(
        "extract",
        {"backbone": backbone_cfg, "extract": cfg.section("extract"), "round": r},
        {"augment": train.augment, **prev},
        lambda out: ms.extract_stage(out, source, train.augment, cfg),
        label=f"extract[{name} r{r}]",
    )
    probe = runner.run(
        "probe",
        {
            "probe": cfg.section("probe"),
            "balance": cfg.section("balance"),
            "connection": cfg.finetune.connection,
        },
        {"extract": extract, "augment": train.augment, "split": train.split},
        lambda out: ms.probe_stage(out, extract, train.augment, train.split, cfg, title),
        label=f"probe[{name} r{r}]",
    )
    finetune_cfg = {"finetune": cfg.section("finetune"), "backbone": backbone_cfg, "round": r}
    denoiser = {"denoise": train.denoise} if train.denoise is not None else {}
    ft_key_inputs = {
        "probe": probe,
        "extract": extract,
        "augment": train.augment,
        "ingest": train.images,
        "split": train.split,
        **prev,
        **denoiser,
    }

    ft_key = artifact_key("finetune", finetune_cfg, {k: a.key for k, a in ft_key_inputs.items()})
    checkpoints = workdir / "checkpoints" / f"finetune-{ft_key}"  # same key as the artifact

    def run_finetune(out: Path) -> dict:
        result = ms.finetune_stage(
            out,
            source,
            probe,
            extract,
            train.augment,
            train.images,
            train.split,
            cfg,
            checkpoints,
            title,
            train.denoise,
        )
        return result

    finetune = runner.run(
        "finetune", finetune_cfg, ft_key_inputs, run_finetune, label=f"finetune[{name} r{r}]"
    )
    shutil.rmtree(checkpoints, ignore_errors=True)  # the published artifact supersedes them
    evaluate = runner.run(
        "evaluate",
        cfg.section("evaluate"),
        {"finetune": finetune, "ingest": test.ingest, "split": test.split},
        lambda out: ms.evaluate_stage(out, finetune, test.ingest, test.split, cfg, title),
        label=f"evaluate[{name} r{r}]",
    )
    return ChainResult(name, r, extract, probe, finetune, evaluate)


def preflight(cfg: PipelineConfig) -> None:
    """Fail before any work: unknown backbones, missing weights (unless a fallback is set)."""
    from cad.backbones import check_weights
    from cad.errors import WeightsError
    from cad.log import warn_loudly

    for backbone in cfg.backbones:
        problem = check_weights(backbone.name, backbone.weights)
        if problem and backbone.fallback == "none":
            raise WeightsError(problem)
        if problem:
            warn_loudly(f"{backbone.name}: {problem} -- using RANDOM weights (fallback)")


def run_pipeline(
    cfg: PipelineConfig,
    workdir: str | Path = "runs/breast_mri",
    force: list[str] | tuple[str, ...] = (),
    track: bool = True,
) -> RunResult:
    """Run (or resume) the whole pipeline in ``workdir``; returns artifacts and the summary."""
    from cad.evaluate.report import finish_run

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    preflight(cfg)
    (workdir / "config.resolved.yaml").write_text(dump_config(cfg))
    secret = load_secret(workdir)
    runner = StageRunner(ArtifactStore(workdir / "artifacts"), force)
    target = _data_chain(runner, cfg, workdir, secret, cfg.data.manifest, cfg.data.root)
    first = target
    if cfg.transfer.rounds == 2 and cfg.transfer.round1_manifest:
        first = _data_chain(
            runner,
            cfg,
            workdir,
            secret,
            cfg.transfer.round1_manifest,
            cfg.transfer.round1_root or cfg.data.root,
        )
    chains: list[ChainResult] = []
    for backbone in cfg.backbones:
        r1 = _model_chain(runner, cfg, workdir, ms.Source(backbone, 1), first, target)
        chains.append(r1)
        if cfg.transfer.rounds == 2:
            chains.append(
                _model_chain(
                    runner, cfg, workdir, ms.Source(backbone, 2, r1.finetune), target, target
                )
            )
    result = RunResult(workdir, cfg, target, chains, runner)
    result.summary = finish_run(result, started, track=track)
    return result


def config_hash(cfg: PipelineConfig) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]
