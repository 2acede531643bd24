"""``cad compare``: the backbone comparison of one or more finished runs, at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cad.cli.app import app, handle_errors
from cad.log import print_table


@app.command()
@handle_errors
def compare(
    workdirs: Annotated[
        list[Path], typer.Argument(help="Workdirs of finished runs (each has summary.json).")
    ],
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Also write the table as CSV here.")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Also write one self-contained page: the table and plots."),
    ] = None,
) -> None:
    """One row per backbone and round of every run: weights, both nodes, probe F1 and its
    chance level, validation F1, test F1 and ROC AUC with their intervals, patient ROC AUC
    (the table `cad run` also logs to the MLflow parent run as comparison.md/.csv)."""
    import csv

    from rich.table import Table

    from cad.artifacts.summary import RunDir
    from cad.errors import CadError
    from cad.pipeline.finish import comparison_rows

    rows: list[dict[str, str]] = []
    runs = [RunDir(workdir) for workdir in workdirs]
    for workdir, run in zip(workdirs, runs, strict=True):
        if not run.summary_path.is_file():
            raise CadError(f"{workdir}: no summary.json; pass the workdir of a finished cad run")
        for row in comparison_rows(run.read_summary()):
            rows.append({"run": workdir.name, **row} if len(workdirs) > 1 else row)
    if not rows:
        raise CadError("no backbone results in these runs")
    table = Table(title="cad compare")
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    print_table(table)
    if csv_out is not None:
        with open(csv_out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if html_out is not None:
        from cad.pipeline.compare_page import write_compare_page

        write_compare_page(rows, runs, html_out)
