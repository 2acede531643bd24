"""``cad listen``: the typer shell over :class:`cad.pacs.listen.Listener`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cad.cli.app import KEPT, app, handle_errors, tune_process
from cad.errors import CadError
from cad.pacs import cli as pacs_cli
from cad.scoring import cli as scoring_cli

KEPT["listen"] = (
    "scored studies are in the outputs; received studies stay staged and are scored at the "
    "next start (a study cut off mid-transfer was not kept: its sender sends it again)"
)


@app.command()
@handle_errors
def listen(
    *,
    model: Annotated[
        str,
        typer.Option(
            help="Model package directory, runs:/<run_id>/model or models:/<name>@<alias>."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Predictions CSV; each scored study is appended.")],
    aet: Annotated[str, typer.Option(help="Our AE title (senders call it).")] = "CAD",
    port: Annotated[int, typer.Option(help="TCP port to listen on (0: any free one).")] = 11112,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    allow_aet: Annotated[
        list[str] | None,
        typer.Option(help="Accept associations only from this calling AE title (repeatable)."),
    ] = None,
    study_timeout: Annotated[
        float,
        typer.Option(help="A study is complete after this many seconds without an instance."),
    ] = 30.0,
    score_on_release: Annotated[
        bool,
        typer.Option(
            help="A study is also complete when the association that brought it is released "
            "(turn off for senders that send a study's series in separate associations)."
        ),
    ] = True,
    errors: Annotated[
        Path | None, typer.Option(help="CSV of files not scored. Default: <out stem>.errors.csv.")
    ] = None,
    level: Annotated[
        str, typer.Option(help="'slice', or 'series': also one aggregated row per series.")
    ] = "slice",
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="Decoding worker processes (0: none).")] = 2,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/ models.")
    ] = None,
    dicom_out: Annotated[
        Path | None,
        typer.Option(
            help="Write a DICOM SR and key image per scored study into DIR/<study pseudonym>/ "
            "(they carry the study's real identifiers: keep DIR private)."
        ),
    ] = None,
    report_dir: scoring_cli.ReportDir = None,
    report_phi: scoring_cli.ReportPhi = False,
    report_pdf: scoring_cli.ReportPdf = False,
    staging: pacs_cli.Staging = None,
    keep_staged: Annotated[
        bool, typer.Option("--keep-staged", help="Keep each study's staged files after scoring.")
    ] = False,
    send_results: Annotated[
        bool,
        typer.Option("--send-results", help="Store each study's --dicom-out results into --pacs."),
    ] = False,
    pacs: Annotated[
        str | None,
        typer.Option(
            help="With --send-results: http://host:port/dicom-web or dicom://AET@host:port "
            "(credentials from CAD_PACS_USER / CAD_PACS_PASSWORD or CAD_PACS_CREDENTIALS)."
        ),
    ] = None,
    calling_aet: pacs_cli.CallingAet = "CAD",
) -> None:
    """Receive studies over DICOM C-STORE and score each one when it is complete, with the
    scoring of `cad score` (same rows, outcomes and pseudonyms). Runs until Ctrl-C or
    SIGTERM; a restart scores what was received but not yet scored, and never a study twice.

    Accepts MR Image, Enhanced MR and Legacy Converted Enhanced MR storage; other objects
    get status 0x0122 (SOP class not supported) and a row in <out stem>.received.csv.
    Received files are staged in <out stem>.staged/ (0700, patient data).

    Exit codes: 2 usage, model, port or disk error (nothing is listening); it runs until
    stopped, which is the normal end (130/143).
    """
    from cad.pacs.listen import Listener, ListenOptions

    if send_results != (pacs is not None) or (send_results and dicom_out is None):
        raise CadError("--send-results stores the --dicom-out results into --pacs: give all three")
    tune_process()
    opts = ListenOptions(
        model=model,
        out=out,
        aet=aet,
        host=host,
        port=port,
        allow_aet=list(allow_aet or []),
        study_timeout=study_timeout,
        on_release=score_on_release,
        errors=errors,
        staging=staging,
        keep_staged=keep_staged,
        level=level,
        batch_size=batch_size,
        workers=workers,
        tracking_uri=tracking_uri,
        dicom_out=dicom_out,
        report_dir=report_dir,
        report_phi=report_phi,
        report_pdf=report_pdf,
        pacs=pacs,
        calling_aet=calling_aet,
    )
    Listener(opts).serve()
