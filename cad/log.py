"""Console, logging and progress bars: the only way code below the CLI talks to the user.

Log lines never carry identifiers from the input (names, IDs, UIDs, paths): callers pass
pseudonyms and counts only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


def print_table(table: Table) -> None:
    """Print a result table whole: to a file or pipe (no terminal width to respect) it is
    printed at its natural width, so names and nodes stay copyable, never ``incepti…``."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update(max_width=10_000)).maximum
    narrow = console.width
    console.width = max(narrow, natural)  # Console.print(width=) cannot exceed this
    try:
        console.print(table)
    finally:
        console.width = narrow


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """Rich console logging plus an optional plain-text log file."""
    root = logging.getLogger("cad")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(RichHandler(console=console, show_path=False, markup=False))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.propagate = False


def _interactive() -> bool:
    return console.is_terminal or "pytest" not in sys.modules


@contextmanager
def progress(description: str, total: int | None, unit: str = "items") -> Iterator:
    """A rich progress bar with counts, rate and ETA; yields ``advance(n=1)``."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn(f"{unit}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not _interactive(),
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


_warned: set[str] = set()


def warn_loudly(message: str) -> None:
    """A warning that must not be missed (e.g. random weights instead of ImageNet)."""
    from rich.panel import Panel

    logging.getLogger("cad").warning(message)
    console.print(Panel(message, title="WARNING", style="bold red"), markup=False)


def warn_once(message: str) -> None:
    """:func:`warn_loudly`, at most once per process for the same message."""
    if message not in _warned:
        _warned.add(message)
        warn_loudly(message)
