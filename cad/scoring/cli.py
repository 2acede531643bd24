"""``cad score``: the typer shell over :func:`cad.scoring.api.score_folder`.

Imported when the ``cad`` CLI starts, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from cad.errors import CadError
from cad.pacs import cli as pacs_cli

ReportDir = Annotated[
    Path | None,
    typer.Option(
        help="Write a self-contained HTML report per scored study into DIR/<study "
        "pseudonym>/report.html: finding, top-3 slices with Grad-CAM, model card. "
        "PHI-free unless --report-phi."
    ),
]
ReportPhi = Annotated[
    bool,
    typer.Option(
        "--report-phi",
        help="Add the patient's name, ID and study date to each --report-dir report "
        "(for the radiologist reading that study): keep DIR private.",
    ),
]
ReportPdf = Annotated[
    bool,
    typer.Option("--report-pdf", help="Also print each report to report.pdf (headless Chromium)."),
]


def score_command(
    dicom_dir: Annotated[
        Path | None,
        typer.Argument(help="Root folder of a DICOM export; walked recursively (or --pacs)."),
    ] = None,
    *,
    model: Annotated[
        str,
        typer.Option(
            help="Model package directory (model.safetensors, "
            "model.json, SHA256SUMS), runs:/<run_id>/model, "
            "models:/<name>@<alias> or models:/<name>/<version>."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Predictions CSV: one row per slice.")],
    errors: Annotated[
        Path | None,
        typer.Option(
            help="CSV of files not scored, with their outcome. Default: <out stem>.errors.csv."
        ),
    ] = None,
    level: Annotated[
        str,
        typer.Option(
            help="Also write aggregated rows per 'series' or per "
            "'patient' (max, mean, positive slices); 'slice': "
            "slice rows only."
        ),
    ] = "slice",
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="Decoding worker processes (0: none).")] = 2,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted run: score only what is missing."),
    ] = False,
    cam: Annotated[
        Path | None,
        typer.Option(
            help="Write Grad-CAM overlays (PNG) of slices "
            "at or above the threshold into this folder."
        ),
    ] = None,
    key_map: Annotated[
        Path | None,
        typer.Option(
            help="Also write a re-identification CSV "
            "(pseudonym -> PatientID, UIDs, paths). It "
            "holds PHI: keep it private."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI for runs:/ "
            "and models:/ models. Default: "
            "$MLFLOW_TRACKING_URI, else "
            "sqlite:///mlflow.db."
        ),
    ] = None,
    dicom_out: Annotated[
        Path | None,
        typer.Option(
            help="Write a DICOM Comprehensive SR per scored study into DIR/<study "
            "pseudonym>/sr.dcm. It carries the study's real patient and study identifiers "
            "(it belongs in the patient's study): keep DIR private."
        ),
    ] = None,
    report_dir: ReportDir = None,
    report_phi: ReportPhi = False,
    report_pdf: ReportPdf = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Score only the K-th of N deterministic shards (by patient), e.g. 3/8; "
            "join the N outputs with `cad score merge`."
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local, or ray: decode in Ray Data CPU tasks and predict in model actors "
            "(pip install 'cad\\[ray]'; a local Ray, or the cluster in RAY_ADDRESS); the "
            "same bytes as a local run."
        ),
    ] = "local",
    pacs: pacs_cli.Pacs = None,
    study_date: pacs_cli.StudyDate = None,
    accessions: pacs_cli.Accessions = None,
    patients: pacs_cli.Patients = None,
    calling_aet: pacs_cli.CallingAet = "CAD",
    staging: pacs_cli.Staging = None,
    keep_staged: pacs_cli.KeepStaged = False,
    send_results: pacs_cli.SendResults = False,
) -> None:
    """Score every DICOM study below DICOM_DIR (or from --pacs URL) with a trained model.

    Preprocessing comes from the model package and runs through the training code.
    Outputs carry keyed pseudonyms only (no names, IDs, dates, UIDs or paths). Files of a
    scored study that the model does not read (localizer, other series) are counted as
    skipped; every file that could not be scored gets a row in the errors CSV.

    Exit codes: 0 every study was scored (other series only skipped); 1 some files were
    not scored (see the errors CSV), the rest were; 2 usage or model error (nothing was
    scored).

    `cad score merge --out predictions.csv shard1.csv ... shardN.csv` joins the outputs of
    N `--shard K/N` runs into exactly the files one unsharded run writes.
    """
    from cad.scoring.api import score_folder

    pacs_options = dict(study_date=study_date, accessions=accessions, patients=patients)
    pacs_options |= dict(staging=staging, keep_staged=keep_staged)
    pacs_cli.check_source(dicom_dir, pacs, pacs_options)
    if send_results and (pacs is None or dicom_out is None):
        raise CadError("--send-results stores the --dicom-out results into --pacs: give both")
    if pacs is not None:
        from cad.pacs.score import score_pacs

        if shard is not None or executor != "local":
            raise CadError(
                "--shard and --executor apply to folders; a PACS query is scored in one run"
            )
        scorer = functools.partial(score_pacs, pacs=pacs, calling_aet=calling_aet, **pacs_options)
    else:
        scorer = functools.partial(
            score_folder, dicom_dir=dicom_dir, shard=shard, executor=executor
        )
    summary = scorer(
        model,
        out=out,
        errors=errors,
        level=level,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        cam_dir=cam,
        key_map=key_map,
        tracking_uri=tracking_uri,
        dicom_out=dicom_out,
        report_dir=report_dir,
        report_phi=report_phi,
        report_pdf=report_pdf,
    )
    _print_summary(summary, cam is not None, key_map is not None, dicom_out is not None)
    if report_dir is not None:
        from cad.log import console

        console.print(f"reports: {summary.reports} in {report_dir}")
    exit_code = summary.exit_code
    if pacs is not None:
        pacs_cli.print_transfers(summary)
        if send_results and dicom_out is not None:
            exit_code = max(exit_code, pacs_cli.send_back(pacs, dicom_out, calling_aet))
    raise typer.Exit(exit_code)


def _print_summary(summary, cam: bool, key_map: bool, dicom_out: bool = False) -> None:
    from rich.table import Table

    from cad.log import console, print_table

    table = Table(title="cad score")
    table.add_column("")
    table.add_column("count", justify="right")
    rows = [
        ("files", summary.files),
        ("studies scored", f"{summary.studies_scored} of {summary.studies}"),
        ("slices scored", summary.slices),
        ("files scored", summary.scored_files),
        ("files skipped (other series)", summary.skipped),
    ]
    rows += [(f"not scored: {outcome}", n) for outcome, n in summary.errors.items()]
    if cam:
        rows.append(("heat maps", summary.cams))
    if dicom_out:
        rows.append(("DICOM SR documents", summary.dicom_results))
    for name, value in rows:
        table.add_row(name, str(value))
    print_table(table)
    console.print(
        f"predictions: {summary.predictions}\nerrors: {summary.errors_csv}"
        + (f"\nkey map (PHI, keep private): {summary.key_map}" if key_map else "")
    )


def merge_command(
    shards: Annotated[
        list[Path], typer.Argument(help="The predictions CSV of every shard (any order).")
    ],
    out: Annotated[Path, typer.Option(help="Merged predictions CSV.")],
    errors: Annotated[
        Path | None, typer.Option(help="Merged errors CSV. Default: <out stem>.errors.csv.")
    ] = None,
    key_map: Annotated[
        Path | None, typer.Option(help="Merged key map (PHI), from --shard-key-map files.")
    ] = None,
    shard_key_map: Annotated[
        list[Path] | None,
        typer.Option(help="Each shard's key map, in the order of SHARDS (repeatable)."),
    ] = None,
) -> None:
    """Join the outputs of `cad score --shard K/N` runs (K = 1..N) into exactly the files
    an unsharded run writes: predictions, errors (found next to each shard's predictions as
    <stem>.errors.csv) and, with --key-map, the key map."""
    from cad.scoring.merge import merge_shards

    summary = merge_shards(list(shards), out, errors, shard_key_map, key_map)
    _print_summary(summary, False, key_map is not None)
    raise typer.Exit(summary.exit_code)
