"""What both PACS clients (DICOMweb, DIMSE) offer, and how one is opened from a URL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cad.pacs.credentials import Credentials, load_credentials
from cad.pacs.query import StudyFilter
from cad.pacs.target import PacsTarget, parse_target

# A retrieved instance is written as ``name(sop_instance_uid)``; ``on_file`` runs after each.
Namer = Callable[[str], str]
QUIET_LOGGERS = ("dicomweb_client", "pynetdicom", "urllib3")  # they log raw UIDs and queries


@dataclass(frozen=True)
class RemoteStudy:
    """A study the PACS has: identifiers (kept in memory only) and its instance count."""

    study_uid: str
    patient_id: str
    instances: int | None  # None: the PACS did not say
    sop_classes: tuple[str, ...] = ()  # SOPClassesInStudy, when the PACS returns it


class PacsClient(Protocol):
    target: PacsTarget

    def find_studies(self, flt: StudyFilter) -> list[RemoteStudy]:
        """The studies matching one filter (PacsError when the PACS cannot answer)."""
        ...

    def count_instances(self, study: RemoteStudy) -> int:
        """How many instances the study holds (when the study search did not say)."""
        ...

    def retrieve(
        self, study: RemoteStudy, folder: Path, name: Namer, on_file: Callable[[], None]
    ) -> int:
        """Write every instance of ``study`` into ``folder``; return the count written.
        Raises TransferError (or PacsUnreachable) when the transfer breaks off."""
        ...

    def store(self, path: Path) -> None:
        """Store one DICOM file; StoreError names why it was refused."""
        ...

    def close(self) -> None: ...


def quiet_libraries() -> None:
    """The transport libraries log raw UIDs, query strings and peer replies at INFO/DEBUG;
    cad's own log lines carry pseudonyms only, so theirs are limited to errors."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def open_client(
    url: str | PacsTarget, calling_aet: str | None = None, timeout: float = 30.0
) -> PacsClient:
    """A client for ``url`` with the credentials the environment names."""
    from cad.pacs.target import DEFAULT_CALLING_AET

    target = (
        url
        if isinstance(url, PacsTarget)
        else parse_target(url, calling_aet or DEFAULT_CALLING_AET)
    )
    credentials: Credentials | None = load_credentials()
    quiet_libraries()
    if target.kind == "dicomweb":
        from cad.pacs.dicomweb import DicomWebClient

        return DicomWebClient(target, credentials, timeout)
    from cad.pacs.dimse import DimseClient

    return DimseClient(target, credentials, timeout)
