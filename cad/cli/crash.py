"""Crash reports: what an unexpected exception (a bug, exit code 3) leaves for a bug report.

The report holds the traceback's shape (code file, line, function, source line), the
exception's type, cad's and torch's versions, the platform and the subcommand, and nothing
a user typed or a file held: argument values, paths and quoted text are scrubbed from the
exception messages, frame paths are cut to the package-relative part, no locals are kept.
Written to ``$CAD_CACHE/crash/`` (else ``$XDG_CACHE_HOME/cad/crash/``, else
``~/.cache/cad/crash/``), mode 0600.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

from cad import __version__

REDACTED = "<redacted>"
# a path-like token (/a/b, ./x, C:\x, ~/x) or quoted text: where values and names show up
_PATHISH = re.compile(r"""(?:[A-Za-z]:\\|~/|\.{0,2}/)[^\s'",;:)\]}]*""")
_QUOTED = re.compile(r"""'[^']*'|"[^"]*\"""")
_NUMBERS = re.compile(r"\b\d{4,}\b")  # long digit runs: IDs, dates, accession numbers


def crash_dir() -> Path:
    """Where crash reports go (user-level, never inside the data)."""
    if os.environ.get("CAD_CACHE"):
        return Path(os.environ["CAD_CACHE"]).expanduser() / "crash"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cad" / "crash"


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets`` (argument values), paths, quoted text or long
    digit runs."""
    for value in sorted({s for s in secrets if len(s) >= 2}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _QUOTED.sub(REDACTED, text)
    text = _PATHISH.sub(lambda m: REDACTED if len(m.group()) > 1 else m.group(), text)
    return _NUMBERS.sub(REDACTED, text)


def _code_path(filename: str) -> str:
    """A frame's file as ``cad/x.py`` or ``site-packages/<pkg>/x.py``; other files (a user's
    own script, whose folder could name a patient) by their base name only."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) :])
    if "cad" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("cad") :])
    return Path(filename).name


def _argument_values(argv: list[str]) -> list[str]:
    """Every command-line word that is not an option name or the subcommand, with its
    absolute and resolved forms (what a message may echo)."""
    values: list[str] = []
    for word in argv:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if value.startswith("-"):
            continue
        values.append(value)
        for form in (os.path.abspath, os.path.realpath):
            try:
                values.append(form(value))
            except (OSError, ValueError):
                pass
    return values


def format_report(exc: BaseException, command: str, argv: list[str]) -> str:
    """The PHI-free text of a crash report."""
    secrets = [v for v in _argument_values(argv) if v not in command.split()]
    lines = [
        f"cad {__version__} crash report",
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        f"command: {command}",
        "options: " + " ".join(sorted({w.split("=")[0] for w in argv if w.startswith("-")})),
        f"python: {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"torch: {_version('torch')}",
        "",
    ]
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for index, err in enumerate(reversed(chain)):
        if index:
            lines.append("\nwhich led to:\n")
        lines.append("Traceback (most recent call last):")
        for frame in traceback.extract_tb(err.__traceback__):
            where = _code_path(frame.filename)
            lines.append(f'  File "{where}", line {frame.lineno}, in {frame.name}')
            if frame.line and "/" in where:  # code of a package; a script's lines may hold data
                lines.append("    " + frame.line.strip())
        message = scrub(str(err), secrets)
        lines.append(f"{type(err).__module__}.{type(err).__qualname__}: {message}")
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_report(exc: BaseException, command: str, argv: list[str] | None = None) -> Path | None:
    """Write the report (0600); its path, or None if even that fails (a full disk)."""
    text = format_report(exc, command, sys.argv[1:] if argv is None else argv)
    folder = crash_dir()
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except OSError:
        return None
    return path
