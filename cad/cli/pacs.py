"""``cad pacs``: talk to a PACS (``send``: store result objects back)."""

from __future__ import annotations

import typer

from cad.cli.app import app, handle_errors
from cad.pacs.cli import send_command

pacs_app = typer.Typer(help="PACS tools: store DICOM result objects back.", no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")
pacs_app.command("send")(handle_errors(send_command))
