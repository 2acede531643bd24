"""The typer application, its global options and the error handling every command shares."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer

from cad import __version__
from cad.errors import CadError
from cad.log import console, setup_logging

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_SIGNAL_BASE = 128  # interrupted by signal N: exit 128 + N (Ctrl-C 130, SIGTERM 143)
_BUG_AND_SIGNAL_CODES = (
    "3 internal error (a bug: a crash report is written, see `cad --debug`); 130/143 "
    "interrupted (Ctrl-C/SIGTERM; finished work is kept, a rerun continues)."
)
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 partial (some inputs unusable, listed); 2 usage, configuration, "
    "model or disk error; " + _BUG_AND_SIGNAL_CODES
)
DISK_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}
KEPT = {  # what an interrupted or failed command leaves behind, by command function
    "run": "finished stages are kept in the workdir and a rerun reuses them",
    "score": "patients already written are kept; rerun with --resume to continue",
    "pretrain": "the last checkpoint is kept; a rerun resumes from it",
}
STATE = {"debug": False}

app = typer.Typer(
    help="cad: breast-MRI computer-aided diagnosis by transfer learning.\n\n" + EXIT_CODES_HELP,
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``with`` block unwinds (worker
    pools kill their workers, partial outputs stay resumable) as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends at once
    raise Terminated(signum)


def _command_name(fn: Callable[..., Any]) -> str:
    """``data_check`` -> ``data check``; ``merge_command`` -> ``score merge``."""
    name = fn.__name__.removesuffix("_command").replace("_", " ")
    return "score merge" if name == "merge" else name


def _kept(name: str) -> str:
    return KEPT.get(name, "nothing else was changed")


def _disk_error(exc: OSError, name: str, values: list[str]) -> str:
    """A full, read-only or forbidden output as a message: the file (only when it is one the
    user named on the command line or lies below one) and what was kept."""
    code = errno.errorcode.get(exc.errno or 0, "")
    where = ""
    if exc.filename is not None:
        target = os.path.abspath(os.fsdecode(exc.filename))
        given = [os.path.abspath(v) for v in values if v.strip()]
        if any(target == g or target.startswith(g.rstrip(os.sep) + os.sep) for g in given):
            where = f" {target}:"
    return (
        f"cannot write{where} {exc.strerror or 'error'} ({code}); free space or fix the "
        f"permissions of the output, then rerun: {_kept(name)}"
    )


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The exit codes every command shares: CadError and disk errors -> a one-paragraph
    message and 2; Ctrl-C / SIGTERM -> 130 / 143; anything else is a bug -> a short message
    naming a PHI-free crash report and 3 (the traceback on the console only with --debug)."""

    name = _command_name(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except CadError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt as exc:
            signum = exc.args[0] if isinstance(exc, Terminated) else signal.SIGINT
            signame = signal.Signals(signum).name
            console.print(f"[bold yellow]interrupted ({signame}):[/] {_kept(name)}")
            raise typer.Exit(EXIT_SIGNAL_BASE + signum) from None
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                _crash(exc, name, kwargs)
            message = _disk_error(exc, name, _values(kwargs))
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place a bug meets the user
            _crash(exc, name, kwargs)
        finally:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, previous)

    doc = inspect.cleandoc(fn.__doc__ or "")
    codes = f"Also: {_BUG_AND_SIGNAL_CODES}" if "Exit codes" in doc else EXIT_CODES_HELP
    wrapper.__doc__ = f"{doc}\n\n{codes}"  # the command details 0-2 itself, or not
    return wrapper


def _values(kwargs: dict[str, Any]) -> list[str]:
    """The command's parameter values as text (what a crash report must not repeat)."""
    values: list[str] = []
    for value in kwargs.values():
        items = value if isinstance(value, list | tuple) else [value]
        values += [str(v) for v in items if v is not None and not isinstance(v, bool)]
    return values


def _crash(exc: BaseException, name: str, kwargs: dict[str, Any]) -> None:
    import sys
    import traceback

    from cad.cli.crash import write_report

    if STATE["debug"]:
        traceback.print_exception(exc)
    report = write_report(exc, f"cad {name}", [*sys.argv[1:], *_values(kwargs)])
    where = f"crash report (no patient data): {report}" if report else "no crash report (disk)"
    console.print(
        f"[bold red]internal error (a bug in cad):[/] {type(exc).__name__}. {where}. Please "
        "attach it to a bug report"
        + ("" if STATE["debug"] else "; `cad --debug ...` shows the traceback"),
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_INTERNAL) from None


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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show the traceback of an internal error (exit 3) on the console."
        ),
    ] = False,
) -> None:
    STATE["debug"] = debug
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
