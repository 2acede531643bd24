"""Typed errors. Every message says what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CadError(Exception):
    """Base class of every error cad raises on purpose (exit code 2 in the CLI)."""


class ConfigError(CadError):
    """A pipeline YAML or --set override is invalid."""


class DataError(CadError):
    """Input data (DICOM, manifest, boxes) cannot be used."""


class WeightsError(CadError):
    """Model weights are missing or do not match the network."""


class ModelPackageError(CadError):
    """A model package is missing files, fails its checksums or is malformed."""


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return " did you mean 'x'?" for the closest option, or "" when nothing is close."""
    options = list(options)
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
    if close:
        return f" did you mean '{close[0]}'?"
    return f" valid: {', '.join(sorted(options))}." if options else ""


def look_up_option(value: str, options: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise with the nearest valid one."""
    options = list(options)
    if value in options:
        return value
    raise CadError(f"unknown {what} '{value}';{did_you_mean(value, options)}")
