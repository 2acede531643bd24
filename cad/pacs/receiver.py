"""The C-STORE side of ``cad listen``: pynetdicom event handlers that write each received
MR image into the study's folder in ``incoming/`` of the staging area, and say when a study
is complete.

A study is complete when no instance of it arrived for ``timeout`` seconds (the "stable
study" rule of DICOM routers) or, with ``on_release``, when every association that brought
it was released; an association aborted by the sender leaves the study to the timeout.
Objects the scorer cannot read get a failure status and are counted, never stored. The
handlers run in pynetdicom's association threads; one lock guards the shared state, and
only the main thread publishes studies (:meth:`Receiver.take`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID

from cad.pacs.staging import Staging
from cad.phi import Pseudonymizer

log = logging.getLogger("cad.pacs")

ACCEPTED = {  # the storage SOP classes the scorer reads (grayscale MR, single and multi-frame)
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # the C-STORE failure statuses (PS3.7 C.4.2, PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
NOT_AN_IMAGE, UNREADABLE, NOT_STORED, AGAIN = (
    "not-an-image",
    "unreadable",
    "not-stored",
    "already-scored",
)
UNKNOWN_STUDY = "stu-unknown"  # objects whose study cannot be read


@dataclass
class Arrival:
    """One study being received: its staging folder, counts and who is still sending."""

    study: str
    patient: str
    folder: Path | None = None
    stored: int = 0
    refused: Counter = field(default_factory=Counter)  # (outcome, reason) -> instances
    last: float = field(default_factory=time.monotonic)
    senders: set[int] = field(default_factory=set)  # associations still delivering it
    released: bool = False
    reported: bool = False  # its outcome rows are written


class Receiver:
    def __init__(
        self,
        staging: Staging,
        pseudo: Pseudonymizer,
        scored: set[str],
        timeout: float,
        on_release: bool = True,
    ) -> None:
        self.staging, self.pseudo, self.scored = staging, pseudo, scored
        self.timeout, self.on_release = timeout, on_release
        self.lock = threading.Lock()
        self.arrivals: dict[str, Arrival] = {}
        self.closed = False

    # -- pynetdicom handlers (association threads)

    def handlers(self) -> list:
        from pynetdicom import evt

        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_aborted),
            (evt.EVT_REJECTED, self.on_rejected),
        ]

    def on_store(self, event) -> int:
        sop_class = UID(str(event.request.AffectedSOPClassUID))
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID") or "")
            patient_id = str(ds.get("PatientID") or "")
            sop_uid = str(event.request.AffectedSOPInstanceUID)
        except Exception:  # noqa: BLE001 - any undecodable data set is the sender's problem
            self._count(UNKNOWN_STUDY, "", UNREADABLE, "the data set cannot be decoded", event)
            return CANNOT_UNDERSTAND
        if not study_uid:
            reason = "no StudyInstanceUID: cannot be grouped into a study"
            self._count(UNKNOWN_STUDY, "", UNREADABLE, reason, event)
            return DOES_NOT_MATCH
        study, patient = self.pseudo.study(study_uid), self.pseudo.patient(patient_id)
        if sop_class not in ACCEPTED:
            reason = f"{sop_class.name}: not an MR image the model reads; refused"
            self._count(study, patient, NOT_AN_IMAGE, reason, event)
            return SOP_CLASS_NOT_SUPPORTED
        with self.lock:
            if self.closed:
                return OUT_OF_RESOURCES
            arrival = self._arrival(study, patient, event)
            if study in self.scored:
                reason = "the study was scored before; instances received again are not scored"
                arrival.refused[(AGAIN, reason)] += 1
                return SUCCESS
            if arrival.folder is None:
                arrival.folder = self.staging.begin(study)
            try:
                data = event.encoded_dataset(include_meta=True)
                (arrival.folder / f"{self.pseudo.instance(sop_uid)}.dcm").write_bytes(data)
            except OSError as exc:
                log.error("study %s: an instance could not be stored (%s)", study, exc.strerror)
                arrival.refused[(NOT_STORED, f"disk: {exc.strerror}")] += 1
                return OUT_OF_RESOURCES
            arrival.stored += 1
        return SUCCESS

    def on_released(self, event) -> None:
        self._ended(event, released=True)

    def on_aborted(self, event) -> None:
        self._ended(event, released=False)

    def on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "rejected an association from AE %s at %s: calling AE title not in --allow-aet "
            "(or called AE title not ours)",
            requestor.ae_title,
            requestor.address,
        )

    # -- shared state

    def _arrival(self, study: str, patient: str, event) -> Arrival:
        arrival = self.arrivals.get(study)
        if arrival is None:
            arrival = self.arrivals[study] = Arrival(study, patient)
        arrival.last = time.monotonic()
        arrival.senders.add(id(event.assoc))
        return arrival

    def _count(self, study: str, patient: str, outcome: str, reason: str, event) -> None:
        with self.lock:
            self._arrival(study, patient, event).refused[(outcome, reason)] += 1

    def _ended(self, event, released: bool) -> None:
        with self.lock:
            for arrival in self.arrivals.values():
                if id(event.assoc) in arrival.senders:
                    arrival.senders.discard(id(event.assoc))
                    arrival.released = arrival.released or released

    # -- the main thread

    def take(self, now: float | None = None) -> list[Arrival]:
        """The studies that are complete, removed from the receiver, in the order a folder
        is scored (patient key, then study key)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            done = [
                a
                for a in self.arrivals.values()
                if not a.senders
                and ((self.on_release and a.released) or now - a.last >= self.timeout)
            ]
            for arrival in done:
                del self.arrivals[arrival.study]
        return sorted(done, key=lambda a: (a.patient, a.study))

    def close(self) -> tuple[list[Arrival], list[Arrival]]:
        """Stop storing; return (complete by the senders' account, cut off). A study still
        being sent when the listener stops was cut off: its sender saw the association
        abort and sends it again, so its partial copy is deleted."""
        with self.lock:
            self.closed = True
            arrivals, self.arrivals = list(self.arrivals.values()), {}
        kept = [a for a in arrivals if not a.senders]
        cut = [a for a in arrivals if a.senders]
        for arrival in cut:
            if arrival.folder is not None:
                shutil.rmtree(arrival.folder, ignore_errors=True)
        return sorted(kept, key=lambda a: (a.patient, a.study)), cut
