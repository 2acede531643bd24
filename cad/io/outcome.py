"""The complete vocabulary of per-file outcomes, the typed decode errors, PHI-free reasons."""

from __future__ import annotations

import re
from enum import StrEnum

from cad.errors import DataError


class Outcome(StrEnum):
    """What became of one input file; every command reports exactly one per file."""

    OK = "ok"
    SIDE_FILE = "side-file"  # a file cad itself writes next to data (boxes, reports): skipped
    NOT_DICOM = "not-dicom"
    SPECIAL_FILE = "special-file"  # FIFO, socket, device, a symbolic link to a folder
    UNREADABLE = "unreadable"  # permission denied, symbolic link loop or target missing
    NOT_AN_IMAGE = "not-an-image"
    UNSUPPORTED_CODEC = "unsupported-codec"
    CORRUPT = "corrupt"
    CONFLICTING_DUPLICATE = "conflicting-duplicate"  # same SOPInstanceUID, other content
    AMBIGUOUS_GEOMETRY = "ambiguous-geometry"
    AMBIGUOUS_PHASE = "ambiguous-phase"
    MISSING_PHASE = "missing-phase"  # scoring: the study lacks a phase the model needs
    STUDY_UNUSABLE = "study-unusable"  # scoring: a needed series cannot be decoded/prepared
    PROCESSING_ERROR = "processing-error"  # unexpected failure (a bug or a crashed decoder)

    @property
    def failed(self) -> bool:
        """True for outcomes that make a command report a partial result (exit code 1)."""
        return self not in (Outcome.OK, Outcome.SIDE_FILE)


class DecodeError(DataError):
    """The pixel data of one file cannot be used; ``outcome`` says how, ``reason`` why."""

    outcome = Outcome.CORRUPT
    reason = property(lambda self: str(self))


class CodecError(DecodeError):
    outcome = Outcome.UNSUPPORTED_CODEC


class CorruptError(DecodeError):
    outcome = Outcome.CORRUPT


def safe_reason(message: object) -> str:
    """First line of an exception message, PHI-free: paths, quoted values (names, IDs,
    dates), UIDs and long digit runs are replaced by placeholders."""
    text = re.sub(r"\S*[/\\]\S*", "<path>", (str(message).splitlines() or [""])[0])
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<value>", text)
    text = re.sub(r"\d+(\.\d+){3,}", "<uid>", text)
    return re.sub(r"\d{6,}", "<number>", text)[:100]
