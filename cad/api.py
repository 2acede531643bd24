"""The Python API: what the CLI, tests and notebooks call.

``run_pipeline`` builds the pipeline graph from a config (:mod:`cad.pipeline.graph`), runs
it (:mod:`cad.pipeline.runner`: every stage cached by content key, so a rerun reuses what
is finished and redoes only what a config change touched) and finishes the run: summary,
report and MLflow (:mod:`cad.pipeline.finish`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from cad.artifacts.pretrained import PretrainedWeights
from cad.artifacts.summary import RunDir
from cad.config import PipelineConfig, dump_config, redact_paths
from cad.distributed import World, joined
from cad.errors import ConfigError, WeightsError, did_you_mean, look_up_option
from cad.phi import Pseudonymizer, load_secret
from cad.pipeline.executors import EXECUTORS, RayOptions, run_graph
from cad.pipeline.finish import finish_run
from cad.pipeline.graph import PRETRAIN, STAGE_NAMES, ChainId, Graph, build_graph
from cad.pipeline.result import RunResult, collect
from cad.pipeline.runner import Runner
from cad.scoring.api import score_folder

log = logging.getLogger("cad")
__all__ = ["follow_pipeline", "preflight", "pretrain_pipeline", "run_pipeline", "score_folder"]


def preflight(cfg: PipelineConfig) -> None:
    """Fail before any work: unknown backbones, missing weights (unless a fallback is set)."""
    from cad.backbones import check_weights
    from cad.log import warn_once

    for backbone in cfg.backbones:
        problem = check_weights(backbone.name, backbone.weights)
        if problem and backbone.fallback == "none":
            raise WeightsError(problem)
        if problem and backbone.fallback == "random":
            warn_once(f"{backbone.name}: {problem} -- using RANDOM weights (fallback)")
        elif problem:
            log.warning(
                "%s: %s -- using cad's offline pretrained weights (fallback: pretrain)",
                backbone.name, problem,
            )  # fmt: skip


def check_force(force: Sequence[str]) -> list[str]:
    """``--force`` names checked against the pipeline's stages."""
    for stage in force:
        if stage not in STAGE_NAMES:
            raise ConfigError(
                f"--force: unknown stage '{stage}';{did_you_mean(stage, STAGE_NAMES)}"
            )
    return list(force)


def pipeline_graph(cfg: PipelineConfig, fingerprint: str, only: Sequence[ChainId] = ()) -> Graph:
    """The graph of ``cfg`` (restricted to ``only``): picklable as a factory for executors."""
    graph = build_graph(cfg, fingerprint)
    return graph.only(list(only)) if only else graph


def run_pipeline(
    cfg: PipelineConfig,
    workdir: str | Path = "runs/breast_mri",
    force: Sequence[str] = (),
    track: bool = True,
    only: Sequence[ChainId] = (),
    executor: str = "local",
    address: str | None = None,
) -> RunResult:
    """Run (or resume) the pipeline in ``workdir``; returns its artifacts and summary.

    ``only`` restricts the run to some backbone chains (and what they read); the summary,
    report and MLflow logging then cover those chains. ``executor="ray"`` runs each
    backbone's chain as a Ray task (``address``: an existing cluster; default: a local
    instance); the workdir must then be a path every Ray node shares.
    """
    look_up_option(executor, EXECUTORS, "--executor")
    started = time.time()
    knobs = cfg.finetune.runtime
    with joined(knobs.distributed, knobs.distributed_wait_s) as world:
        _check_world(world, executor)
        result = _run(cfg, workdir, force, track, only, executor, address)
        world.stop()  # the other ranks exit; rank 0 finishes the run (summary, MLflow) alone
    result.summary = finish_run(result, started, track=track)
    return result


def pretrain_pipeline(
    cfg: PipelineConfig, workdir: str | Path, backbones: Sequence[str]
) -> list[tuple[PretrainedWeights, bool]]:
    """Run the pretrain stages of ``cfg``'s ``backbones`` (and the data stages a contrastive
    method reads) in ``workdir``: what ``cad pretrain --pipeline P --workdir W`` does.
    Returns each artifact and whether its weights were reused (workdir or user cache)."""
    run_dir = RunDir(workdir)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    preflight(cfg)
    secret = load_secret(run_dir.root)
    graph = build_graph(cfg, Pseudonymizer(secret).key("secret", "fingerprint"))
    nodes = {n.chain.backbone: n for n in graph if n.stage is PRETRAIN and n.chain is not None}
    runner = Runner(run_dir, secret)
    out = []
    for name in backbones:
        if name not in nodes:
            raise ConfigError(
                f"backbone {name}: the pipeline does not pretrain it (it is not among its "
                "backbones, or its weights are there); pretrained backbones: "
                f"{', '.join(nodes) or 'none'}"
            )
        artifact = runner.run_node(nodes[name])
        assert isinstance(artifact, PretrainedWeights)
        reused = runner.records[-1].reused or bool(artifact.meta.get("cache_reused"))
        out.append((artifact, reused))
    return out


def follow_pipeline(cfg: PipelineConfig, workdir: str | Path, executor: str = "local") -> int:
    """What ``cad run`` does on torchrun's ranks > 0: train beside rank 0 every fine-tuning
    job it announces (:mod:`cad.pipeline.data_parallel`), write nothing; returns how many."""
    from cad.pipeline.data_parallel import follow

    knobs = cfg.finetune.runtime
    with joined(knobs.distributed, knobs.distributed_wait_s) as world:
        if world.size == 1:
            log.warning("finetune.runtime.distributed is off: rank 0 trains alone, this rank exits")
            return 0
        _check_world(world, executor)
        return follow(world, RunDir(workdir))


def _check_world(world: World, executor: str) -> None:
    if world.size > 1 and executor != "local":
        raise ConfigError(
            f"torchrun (data-parallel fine-tuning) and --executor {executor} do not combine: "
            "use torchrun with the local executor, or --executor ray in one process"
        )


def _run(
    cfg: PipelineConfig,
    workdir: str | Path,
    force: Sequence[str],
    track: bool,
    only: Sequence[ChainId],
    executor: str,
    address: str | None,
) -> RunResult:
    run_dir = RunDir(workdir)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    force = check_force(force)
    preflight(cfg)
    # input paths become short hashes: a path can name a patient or a hospital
    run_dir.file(RunDir.CONFIG).write_text(dump_config(redact_paths(cfg)))
    secret = load_secret(run_dir.root)
    fingerprint = Pseudonymizer(secret).key("secret", "fingerprint")
    factory = functools.partial(pipeline_graph, cfg, fingerprint, tuple(only))
    graph = factory()
    runner = Runner(run_dir, secret, force)
    knobs = cfg.executor.runtime
    ray = RayOptions(address, knobs.cpus_per_chain, knobs.gpus_per_chain, knobs.max_retries)
    results = run_graph(graph, runner, executor, factory, ray)
    data, chains = collect(graph, results)
    return RunResult(run_dir, cfg, graph, data, chains, runner.records)
