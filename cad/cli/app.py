"""The typer application, its global options and the error handling every command shares."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from cad import __version__
from cad.errors import CadError
from cad.log import console, setup_logging

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2

app = typer.Typer(
    help="cad: breast-MRI computer-aided diagnosis by transfer learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="DICOM tools: check a folder, generate the phantom, build manifests.", no_args_is_help=True
)
backbones_app = typer.Typer(
    help="The backbone registry: list networks, inspect candidate nodes.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(backbones_app, name="backbones")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """CadError -> a one-paragraph message and exit code 2 (no traceback for users)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CadError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


QUIET_DEFAULTS = {  # read by mlflow when it is imported: set before that, unless the user did
    "MLFLOW_DISABLE_TELEMETRY": "true",  # no usage reports leave the machine
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_third_party() -> None:
    """Environment defaults for the libraries cad drives (the CLI sets them at start-up;
    a Python caller may set the same variables itself)."""
    for name, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)


def tune_process() -> None:
    """Process-wide tuning for the heavy commands (run, score): freed activation memory stays
    in the heap (:mod:`cad.heap`). Done here, at the entry point, never on import."""
    from cad.heap import reuse_freed_memory

    reuse_freed_memory()


def _version(value: bool) -> None:
    if value:
        print(f"cad {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    quiet_third_party()
    setup_logging(verbose=verbose)


def register_score() -> None:
    from typer.core import TyperCommand

    from cad.scoring.cli import merge_command, score_command

    merge_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    merge_app.command()(handle_errors(merge_command))

    class ScoreCommand(TyperCommand):
        """``cad score DICOM_DIR ...``, and ``cad score merge ...`` as its sub-form (a
        folder literally named merge is ``./merge``)."""

        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            if args[:1] == ["merge"]:
                command = typer.main.get_command(merge_app)
                command.main(args[1:], prog_name="cad score merge")  # exits
            return super().parse_args(ctx, args)

    def score(*args: Any, **kwargs: Any) -> Any:
        tune_process()
        return score_command(*args, **kwargs)

    app.command("score", cls=ScoreCommand)(handle_errors(functools.wraps(score_command)(score)))
