"""Store DICOM files into the PACS: STOW-RS (DICOMweb) or C-STORE (DIMSE), one typed
outcome per file. ``send_results(url, folder)`` is what ``--send-results`` calls with the
``--dicom-out`` folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cad.io.files import walk
from cad.pacs.client import open_client
from cad.pacs.errors import PacsAuthError, PacsError, PacsUnreachable, StoreError
from cad.phi import Pseudonymizer, load_secret

log = logging.getLogger("cad.pacs")


@dataclass
class SendReport:
    """What was stored; ``failed`` maps each refused file to its StoreError."""

    pacs: str
    stored: list[Path] = field(default_factory=list)
    failed: dict[Path, StoreError] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given, and every file below each folder (sorted), each once."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += [Path(p) for p in walk(path) if Path(p).is_file()]
        elif path.is_file():
            files.append(path)
        else:
            raise PacsError(f"{path} is neither a file nor a folder; pass DICOM files or folders")
    return list(dict.fromkeys(files))


def secret_folder(files: list[Path]) -> Path:
    """Where the secret that names these files lives: beside the data (the folder sent)."""
    return files[0].parent


def send_results(
    pacs: str, paths: list[str | Path] | str | Path, calling_aet: str | None = None
) -> SendReport:
    """Store every DICOM file in ``paths`` (files or folders) into ``pacs``.

    A file the PACS refuses (or that is not DICOM) is recorded with its StoreError and the
    others are still sent; an unreachable PACS or refused credentials raise (nothing more
    can be stored)."""
    files = expand([paths] if isinstance(paths, str | Path) else list(paths))
    if not files:
        raise PacsError("no files to send; pass the folder --dicom-out wrote, or DICOM files")
    client = open_client(pacs, calling_aet)
    report = SendReport(client.target.url)
    pseudo = Pseudonymizer(load_secret(secret_folder(files)))
    try:
        for path in files:
            try:
                client.store(path)
            except (PacsUnreachable, PacsAuthError):
                raise
            except StoreError as exc:
                report.failed[path] = exc
                log.warning("%s not stored: %s", pseudo.file(path), exc)
            else:
                report.stored.append(path)
    finally:
        client.close()
    log.info("stored %d of %d files into %s", len(report.stored), len(files), report.pacs)
    return report
