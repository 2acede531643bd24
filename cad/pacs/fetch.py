"""Query the PACS, then stage every matching study that is not staged completely yet,
with one typed outcome per study.

Outcomes: ``retrieved``, ``already-staged`` (a rerun does not fetch it again),
``transfer-failed`` (the transfer broke off or came back incomplete: nothing of it is
staged) and ``not-retrieved`` (the PACS stopped answering before its turn). A rerun
fetches exactly the studies that are not complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cad.pacs.client import PacsClient, RemoteStudy
from cad.pacs.errors import PacsAuthError, PacsError, PacsQueryError, PacsUnreachable, TransferError
from cad.pacs.query import StudyFilter
from cad.pacs.staging import Staging
from cad.phi import Pseudonymizer

log = logging.getLogger("cad.pacs")

RETRIEVED, ALREADY, FAILED, NOT_RETRIEVED = (
    "retrieved",
    "already-staged",
    "transfer-failed",
    "not-retrieved",
)
TRANSFER_HEADER = ("study", "patient", "outcome", "instances", "reason")


@dataclass(frozen=True)
class StudyTransfer:
    """One study of the query: pseudonyms, outcome, instances staged, PHI-free reason."""

    study: str
    patient: str
    outcome: str
    instances: int = 0
    reason: str = ""

    @property
    def staged(self) -> bool:
        return self.outcome in (RETRIEVED, ALREADY)

    def row(self) -> tuple[str, str, str, str, str]:
        return (self.study, self.patient, self.outcome, str(self.instances), self.reason)


def find(client: PacsClient, filters: list[StudyFilter]) -> list[RemoteStudy]:
    """Every study matching any filter, once each."""
    studies: dict[str, RemoteStudy] = {}
    for flt in filters:
        found = client.find_studies(flt)
        log.info("%s: %d studies on the PACS", flt.label, len(found))
        for study in found:
            studies.setdefault(study.study_uid, study)
    if not studies:
        raise PacsQueryError(
            f"no study on the PACS at {client.target.url} matches the query "
            f"({filters[0].label}{' and others' if len(filters) > 1 else ''}); check the dates, "
            "accession numbers or patient IDs"
        )
    return list(studies.values())


def fetch(
    client: PacsClient,
    filters: list[StudyFilter],
    staging: Staging,
    pseudo: Pseudonymizer,
    on_file: Callable[[], None] = lambda: None,
) -> list[StudyTransfer]:
    """Stage every study the query matches; studies outside it are removed from staging.
    Query failures raise (nothing to score); transfer failures are outcomes."""
    studies = sorted(find(client, filters), key=lambda s: pseudo.study(s.study_uid))
    dropped = staging.prune({pseudo.study(s.study_uid) for s in studies})
    if dropped:
        log.info("removed %d staged studies that this query does not select", dropped)
    transfers: list[StudyTransfer] = []
    stopped: PacsError | None = None
    for study in studies:
        key, patient = pseudo.study(study.study_uid), pseudo.patient(study.patient_id)
        if stopped is not None:
            reason = "the PACS stopped answering before this study; rerun to retrieve it"
            transfers.append(StudyTransfer(key, patient, NOT_RETRIEVED, 0, reason))
            continue
        try:
            transfers.append(_stage(client, study, key, patient, staging, pseudo, on_file))
        except (PacsUnreachable, PacsAuthError) as exc:
            stopped = exc
            transfers.append(StudyTransfer(key, patient, FAILED, 0, str(exc)))
        except TransferError as exc:
            transfers.append(StudyTransfer(key, patient, FAILED, 0, str(exc)))
        last = transfers[-1]
        if not last.staged:
            log.warning("study %s: %s (%s)", key, last.outcome, last.reason)
    return transfers


def _stage(
    client: PacsClient,
    study: RemoteStudy,
    key: str,
    patient: str,
    staging: Staging,
    pseudo: Pseudonymizer,
    on_file: Callable[[], None],
) -> StudyTransfer:
    expected = study.instances if study.instances is not None else client.count_instances(study)
    if staging.complete(key, expected):
        return StudyTransfer(key, patient, ALREADY, expected)
    with staging.receive(key) as folder:
        got = client.retrieve(study, folder, lambda uid: f"{pseudo.instance(uid)}.dcm", on_file)
        if got != expected:
            raise TransferError(
                f"received {got} of the {expected} instances the PACS lists for this study; "
                "rerun to retrieve it again"
            )
    log.info("study %s: retrieved %d instances", key, got)
    return StudyTransfer(key, patient, RETRIEVED, got)
