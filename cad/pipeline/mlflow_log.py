"""Log a finished run to MLflow: one parent run, a child per backbone and round.

Every child logs the same metric names so the MLflow UI overlays them: ``probe_f1`` with
step = relative depth 0-100 (so layer curves of different backbones line up; the nodes are
in the logged table ``probe_nodes.json``), ``probe_f1_best`` and ``probe_chance_f1``,
``train_loss``/``val_loss``/``val_f1`` with step = epoch, and ``test_<metric>`` (+
``_low``/``_high`` interval bounds, ``test_chance_f1``). Children carry their chain's real
start and end times and the full resolved config (their own backbone entry); plots sit at
the run's artifact root so the compare view lines them up. The parent holds the comparison
table (markdown and CSV) and the overlaid layer curves. Tracking never kills work: failures
are recorded in the summary and the report, artifacts stay on disk.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from cad import __version__
from cad.artifacts.summary import ChainSummary, RunDir, RunSummary, TrackingSummary
from cad.config import dump_config, flatten_params, redact_paths
from cad.errors import CadError
from cad.evaluate.metrics import METRICS
from cad.pipeline.finish import relative_depths
from cad.pipeline.result import ChainArtifacts, RunResult
from cad.tracking import Tracker, default_tracking_uri, redact_uri
from cad.tracking.views import VIEW_TAG, comparison_link, comparison_view

log = logging.getLogger("cad.tracking")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _chain_times(result: RunResult, chain: ChainArtifacts) -> tuple[float | None, float | None]:
    """When the chain's first stage started and its last ended in this invocation."""
    suffix = f"[{chain.backbone} r{chain.round}]"
    mine = [r for r in result.records if r.label.endswith(suffix) and r.ended]
    if not mine:
        return None, None
    return min(r.ended - r.wall_s for r in mine), max(r.ended for r in mine)


def _run_start(result: RunResult) -> float | None:
    """When this invocation's first stage started (the parent run spans the whole run)."""
    starts = [r.ended - r.wall_s for r in result.records if r.ended]
    return min(starts) if starts else None


def _chain_params(result: RunResult, info: ChainSummary) -> dict[str, str]:
    """The full resolved config with this chain's backbone entry in place of the list."""
    cfg = result.config
    (backbone,) = [b for b in cfg.backbones if b.name == info.backbone]
    own = cfg.model_copy(update={"backbones": (backbone,)})
    return {
        **flatten_params(own),
        "backbone": info.backbone,
        "round": str(info.round),
        "finetune_node": info.nodes.finetune,
        "connection_node": info.nodes.connection,
        "threshold": f"{info.threshold:.6f}",
    }


def _log_chain(
    tracker: Tracker,
    parent: str | None,
    result: RunResult,
    chain: ChainArtifacts,
    info: ChainSummary,
    base_tags: dict[str, str],
) -> str | None:
    start, end = _chain_times(result, chain)
    run = tracker.start_run(
        info.title,
        parent_id=parent,
        start_time=start,
        tags={
            **base_tags,
            "backbone": info.backbone,
            "round": str(info.round),
            "weights_source": info.weights_source,
            "weights_fallback": str(info.fell_back_to_random).lower(),
            "finetune_node": info.nodes.finetune,
            "connection_node": info.nodes.connection,
        },
        params=_chain_params(result, info),
    )
    if run is None:
        return None
    scores, steps = info.layer_scores, relative_depths(info)
    tracker.log_metric_steps(run, "probe_f1", [s.f1_mean for s in scores], steps)
    tracker.log_table(
        run,
        {
            "relative_depth": steps,
            "node": [s.node for s in scores],
            "depth": [s.depth for s in scores],
            "f1_mean": [s.f1_mean for s in scores],
            "f1_std": [s.f1_std for s in scores],
            "chosen": [s.node == info.nodes.finetune for s in scores],
        },
        "probe_nodes.json",
    )
    history = chain.finetune.history()
    epochs = [int(h["epoch"]) for h in history]
    for key in ("train_loss", "val_loss", "val_f1"):
        tracker.log_metric_steps(run, key, [h[key] for h in history], epochs)
    test: dict[str, float] = {}
    for name in METRICS:
        m = info.test[name]
        test.update(
            {f"test_{name}": m.value, f"test_{name}_low": m.low, f"test_{name}_high": m.high}
        )
    test.update({f"test_{k}": v for k, v in info.test_operating.items()})
    test.update({f"test_patient_{k}": v for k, v in info.test_patient_operating.items()})
    tracker.log_metrics(run, test)
    tracker.log_metrics(
        run,
        {
            "val_f1_best": info.val_f1,
            "trainable_params": info.trainable_params,
            "probe_f1_best": info.probe.finetune_f1,
            "probe_chance_f1": info.probe.chance_f1_all_positive,
            "test_chance_f1": info.test_chance.f1_all_positive,
        },
    )
    for path in (chain.probe.plot, chain.finetune.curves, *chain.evaluate.plots()):
        tracker.log_artifact(run, path)  # at the root: the compare view lines them up
    tracker.log_artifact(run, chain.probe.path / chain.probe.SCORES, "tables")
    tracker.log_artifact(run, chain.finetune.path / chain.finetune.HISTORY, "tables")
    tracker.log_artifact(run, chain.evaluate.path / chain.evaluate.METRICS, "tables")
    # the evaluated package (model card with the test metrics), registered from "model"
    tracker.log_artifacts(run, chain.evaluate.package or chain.finetune.package, "model")
    tracker.end_run(run, end_time=end)
    return run


def logged_before(
    result: RunResult, summary: RunSummary, tracker: Tracker
) -> TrackingSummary | None:
    """The previous invocation's tracking block when this one computed nothing: every stage
    reused with the same keys, that invocation logged without failures to this store, and
    its runs are still there. A rerun then adds no duplicate rows to the comparison."""
    if not summary.stages or not all(r.reused for r in summary.stages):
        return None
    try:
        before = result.workdir.read_summary()
    except (CadError, ValueError, OSError):  # none yet, or unreadable: log anew
        return None
    tracking = before.tracking
    if tracking is None or not tracking.ok or tracking.uri != redact_uri(tracker.uri):
        return None
    if [(s.label, s.key) for s in before.stages] != [(s.label, s.key) for s in summary.stages]:
        return None
    runs = [tracking.parent_run_id, *tracking.child_runs.values()]
    if not all(run and tracker.finished_run(run) for run in runs):
        return None
    return tracking


def log_run(result: RunResult, summary: RunSummary) -> TrackingSummary:
    """Log everything; returns the tracking block of summary.json."""
    cfg = result.config
    uri = default_tracking_uri(result.workdir.root, cfg.tracking.uri)
    experiment = cfg.tracking.experiment or cfg.name
    tracker = Tracker(
        uri, experiment, retries=cfg.tracking.retries, timeout_s=cfg.tracking.timeout_s
    )
    previous = logged_before(result, summary, tracker)
    if previous is not None:
        for info in summary.results:
            info.mlflow_run_id = previous.child_runs.get(f"{info.backbone}/{info.round}")
        log.info("MLflow: nothing new to log; this run is parent run %s", previous.parent_run_id)
        return previous
    base_tags = {
        "cad_version": __version__,
        "git_commit": git_commit(),
        "data_manifest_hash": summary.data.manifest_hash,
        "pipeline": cfg.name,
    }
    name = f"{cfg.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    parent = tracker.start_run(
        name, params=flatten_params(cfg), tags=base_tags, start_time=_run_start(result)
    )
    if parent is not None:
        redacted = result.workdir.redacted_config
        redacted.parent.mkdir(parents=True, exist_ok=True)
        redacted.write_text(dump_config(redact_paths(cfg)))
        tracker.log_artifact(parent, redacted)
        for name in (
            RunDir.COMPARISON,
            RunDir.COMPARISON_METRICS,
            RunDir.COMPARISON_ROC,
            RunDir.COMPARISON_TABLE,
            RunDir.COMPARISON_CSV,
        ):
            if result.workdir.file(name).is_file():
                tracker.log_artifact(parent, result.workdir.file(name))
    runs: dict[str, str | None] = {}
    for chain, info in zip(result.chains, summary.results, strict=True):
        run = _log_chain(tracker, parent, result, chain, info, base_tags)
        info.mlflow_run_id = run
        runs[f"{chain.backbone}/{chain.round}"] = run
    registered = None
    best = summary.best
    if best and cfg.tracking.register_name:
        best_run = runs.get(f"{best.backbone}/{best.round}")
        if best_run:
            registered = tracker.register_model(best_run, "model", cfg.tracking.register_name)
        if registered:
            (row,) = [
                r for r in summary.results if (r.backbone, r.round) == (best.backbone, best.round)
            ]
            tracker.tag_model_version(
                cfg.tracking.register_name,
                registered,
                {
                    "backbone": row.backbone,
                    "round": str(row.round),
                    "weights_source": row.weights_source,
                    "finetune_node": row.nodes.finetune,
                    "connection_node": row.nodes.connection,
                    "val_f1": f"{row.val_f1:.4f}",
                },
            )
    if parent is not None:
        tracker.log_metrics(parent, {"best_val_f1": max(r.val_f1 for r in summary.results)})
        tracker.end_run(parent)
    experiment_id = tracker.experiment_id
    if experiment_id is not None:
        tracker.set_experiment_tag(VIEW_TAG, comparison_view())
    return TrackingSummary(
        uri=redact_uri(uri),
        experiment=experiment,
        parent_run_id=parent,
        child_runs=runs,
        registered_model=cfg.tracking.register_name if registered else None,
        registered_version=registered,
        ok=tracker.ok,
        failures=tracker.failures,
        ui_link=comparison_link(experiment_id) if experiment_id is not None else None,
    )
