"""``cad run``: the pipeline (data -> per-layer probe -> fine-tune -> evaluate -> report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cad.cli.app import EXIT_PARTIAL, app, handle_errors, tune_process
from cad.log import console, print_table, setup_logging
from cad.pipeline.graph import STAGE_NAMES


@app.command()
@handle_errors
def run(
    pipeline: Annotated[
        Path, typer.Argument(help="Pipeline YAML, e.g. pipelines/breast_mri.yaml.")
    ],
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Working directory for artifacts, report, MLflow db. Default: runs/<name>."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config value, e.g. --set finetune.epochs=2 (repeatable)."
        ),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            help="Redo this stage (and what follows) even if finished: "
            + ", ".join(STAGE_NAMES)
            + " (repeatable)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this backbone chain, BACKBONE or BACKBONE:ROUND (repeatable); "
            "the data stages it reads are reused or computed."
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local, or ray: each backbone chain as a Ray task (pip install 'cad\\[ray]'); "
            "the workdir must be shared by every Ray node."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (ray://host:port or host:port); default: local."),
    ] = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="Skip MLflow logging.")] = False,
) -> None:
    """Run the pipeline: data -> per-layer probe -> fine-tune -> evaluate -> report + MLflow.

    Finished stages are reused; a changed stage config redoes that stage and what follows.

    Data-parallel fine-tuning: torchrun --nproc_per_node N -m cad run PIPELINE ...

    Exit codes: 0 done; 1 done, but some studies could not be used (listed in the ingest
    artifact's ingest_report.csv); 2 usage, configuration or model error.
    """
    from cad.api import check_force
    from cad.config import load_config
    from cad.pipeline.graph import parse_chains

    cfg = load_config(pipeline, set_ or [])  # fail fast, before the heavy imports
    force_list = check_force(force or [])
    chains = parse_chains(only or [], cfg)
    workdir = workdir or Path("runs") / cfg.name
    from cad.distributed import launched_rank

    if launched_rank() > 0:  # torchrun's other ranks: train beside rank 0, write nothing
        setup_logging(None)
        tune_process()
        from cad.api import follow_pipeline

        follow_pipeline(cfg, workdir, executor)
        return
    setup_logging(workdir / "logs" / "run.log")
    tune_process()
    from cad.api import run_pipeline

    result = run_pipeline(
        cfg,
        workdir,
        force=force_list,
        track=not no_track,
        only=chains,
        executor=executor,
        address=address,
    )
    summary = result.summary
    assert summary is not None
    table = Table(title=f"cad run: {cfg.name}")
    columns = ("backbone", "round", "fine-tuning node", "connection node", "val F1", "test F1",
               "test AUC")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for r in summary.results:
        table.add_row(
            r.backbone,
            str(r.round),
            r.nodes.finetune,
            r.nodes.connection,
            f"{r.val_f1:.3f}",
            f"{r.test['f1'].value:.3f}",
            f"{r.test['roc_auc'].value:.3f}",
        )
    print_table(table)
    tracking = summary.tracking
    if tracking is not None and not tracking.ok:
        console.print(
            f"[bold yellow]MLflow logging failed[/] ({tracking.uri}); all artifacts "
            "are on disk. See report.md."
        )
    console.print(f"report: {workdir / 'report.md'}\nsummary: {workdir / 'summary.json'}")
    if tracking is not None and tracking.ok:
        import shutil
        import sys

        # the mlflow next to this interpreter (often only in .venv/bin, not on PATH)
        beside = Path(sys.executable).with_name("mlflow")
        mlflow = (
            "mlflow" if shutil.which("mlflow") == str(beside) or not beside.exists() else beside
        )
        link = tracking.ui_link or ""
        if tracking.uri.startswith(("http://", "https://")):
            console.print(f"MLflow UI: {tracking.uri.rstrip('/')}/{link}", soft_wrap=True)
        else:
            console.print(
                f"MLflow UI: {mlflow} ui --backend-store-uri {tracking.uri}\n"
                f"  then open http://127.0.0.1:5000/{link}",
                soft_wrap=True,
            )
    unusable = unusable_studies(summary.data.ingest)
    if unusable:
        console.print(f"[bold yellow]{unusable}[/]")
        raise typer.Exit(EXIT_PARTIAL)


def unusable_studies(ingest: dict) -> str | None:
    """What to say when ingest could not use some studies (the run used the rest, and
    exits 1: some inputs were unusable), or None."""
    skipped = int(ingest.get("studies_skipped") or 0)
    if not skipped:
        return None
    return (
        f"{skipped} of {ingest.get('studies')} studies could not be used: each file's "
        "outcome is in the ingest artifact's ingest_report.csv"
    )
