"""The one study reader: files of one study, a list of files or a folder -> every file's
final outcome and the assembled studies. Ingest, ``cad data check`` and ``cad score``
all read through it; a PACS retrieval into local files or a shard of a distributed
scoring job hands it a list of files, or records from a header pass done elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cad.errors import DataError
from cad.io.files import walk
from cad.io.header import FileRecord, read_header
from cad.io.study import Study, group_studies, load_study


class Decode(StrEnum):
    """How much pixel data a read decodes."""

    LAZY = "lazy"  # headers only; a volume decodes on first use (scoring: needed phases only)
    CHECK = "check"  # decode every usable file to validate it, keep nothing (cad data check)
    EAGER = "eager"  # decode every usable file and keep the volumes (ingest)


@dataclass
class StudyRead:
    """What the reader made of some files: each file's record (final outcome, input
    order) and the studies assembled from the usable ones."""

    records: list[FileRecord]
    studies: list[Study]


def read_records(records: list[FileRecord], decode: Decode = Decode.LAZY) -> StudyRead:
    """Assemble studies from header records (``read_header`` results, in any process)."""
    studies = [
        load_study(group, decode_pixels=decode != Decode.LAZY, keep_pixels=decode == Decode.EAGER)
        for group in group_studies(records)
    ]
    return StudyRead(records, studies)


def read_files(paths: Iterable[str | Path], decode: Decode = Decode.LAZY) -> StudyRead:
    """Read a list of files (one study, or several: they are grouped by their headers)."""
    return read_records([read_header(p) for p in paths], decode)


def read_folder(folder: str | Path, decode: Decode = Decode.LAZY) -> StudyRead:
    """Read every entry below ``folder`` (see :func:`cad.io.files.walk`)."""
    if not Path(folder).is_dir():
        raise DataError(
            "a study folder does not exist or is not a folder; check the data root and the "
            "manifest's paths"
        )
    return read_files(walk(folder), decode)
