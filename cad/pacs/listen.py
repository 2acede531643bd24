"""``cad listen``: a DICOM C-STORE receiver (pynetdicom Storage SCP) that scores each study
as it arrives, with the scoring path of ``cad score``.

Received studies are staged complete-or-absent (:mod:`cad.pacs.staging`): written into
``incoming/`` and renamed into ``studies/`` once complete (:mod:`cad.pacs.receiver`), then
scored one at a time and appended to the outputs (:mod:`cad.pacs.scorer`). At start-up,
studies staged but not yet scored (a listener stopped while they waited) are scored first.
"""

from __future__ import annotations

import logging
import shutil
import time

from cad.errors import CadError
from cad.pacs.client import quiet_libraries
from cad.pacs.dimse import DECODABLE
from cad.pacs.receiver import ACCEPTED, Arrival, Receiver
from cad.pacs.scorer import CUT_OFF, ListenOptions, StudyScorer

log = logging.getLogger("cad.pacs")

__all__ = ["ListenOptions", "Listener"]


class Listener:
    """A :class:`StudyScorer` behind a Storage SCP; ``serve`` runs until a signal."""

    def __init__(self, opts: ListenOptions) -> None:
        self.opts = opts
        self.scorer = StudyScorer(opts)

    def finish(self, arrival: Arrival) -> None:
        """A complete study: report what was refused, publish and score what was stored."""
        self.scorer.report(arrival)
        if arrival.folder is not None and arrival.stored:
            self.scorer.area.publish(arrival.folder, arrival.study, merge=True)
            self.scorer.score_staged(arrival.study, arrival.patient)
        elif arrival.folder is not None:
            shutil.rmtree(arrival.folder, ignore_errors=True)

    # -- the server

    def _ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.opts.aet)
        ae.require_called_aet = True
        if self.opts.allow_aet:
            ae.require_calling_aet = list(self.opts.allow_aet)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:  # others are refused per object, typed
            abstract = context.abstract_syntax
            if abstract is not None:  # always set in pynetdicom's list; typed Optional
                ae.add_supported_context(abstract, DECODABLE if abstract in ACCEPTED else None)
        return ae

    def serve(self) -> None:
        """Score what waits, then receive and score until interrupted (KeyboardInterrupt,
        or Terminated on SIGTERM: the CLI turns them into exit 130 / 143)."""
        done = self.scorer.catch_up()
        if done:
            log.info("scored %d studies staged by a previous listener", done)
        quiet_libraries()  # pynetdicom logs raw UIDs at INFO
        receiver = Receiver(
            self.scorer.area,
            self.scorer.pseudo,
            set(self.scorer.ledger.scored),
            self.opts.study_timeout,
            self.opts.on_release,
        )
        ae = self._ae()
        try:
            server = ae.start_server(
                (self.opts.host, self.opts.port), block=False, evt_handlers=receiver.handlers()
            )
        except OSError as exc:
            raise CadError(
                f"cannot listen on {self.opts.host}:{self.opts.port} ({exc.strerror}); pick a "
                "free --port (ports below 1024 need privileges) and a --host of this machine"
            ) from None
        port = server.server_address[1]
        log.info(
            "listening on %s:%d as AE %s (studies complete after %g s without instances%s)",
            self.opts.host,
            port,
            self.opts.aet,
            self.opts.study_timeout,
            " or when released" if self.opts.on_release else "",
        )
        pending: list[Arrival] = []  # complete, taken from the receiver, not scored yet
        try:
            while True:
                pending = receiver.take()
                while pending:
                    study = pending[0].study
                    receiver.scored.add(study)  # from now on a resend is "again"
                    self.finish(pending[0])
                    if study not in self.scorer.ledger.scored:  # failed: staged, open again
                        receiver.scored.discard(study)
                    pending.pop(0)
                time.sleep(self.opts.poll)
        finally:
            kept, cut = receiver.close()
            server.shutdown()  # stop accepting
            ae.shutdown()  # abort what is still open: its senders send again
            self._stop(kept, cut, pending)

    def _stop(self, kept: list[Arrival], cut: list[Arrival], pending: list[Arrival]) -> None:
        """Keep every study its senders finished (staged: scored at the next start);
        report the cut-off ones (deleted: their senders saw the abort)."""
        for arrival in kept + pending:  # complete: staged for the next start
            self.scorer.report(arrival)
            if arrival.folder is not None and arrival.folder.is_dir() and arrival.stored:
                self.scorer.area.publish(arrival.folder, arrival.study, merge=True)
        for arrival in cut:
            reason = "the listener stopped during the transfer; the sender should send it again"
            self.scorer.rows([(arrival.study, arrival.patient, CUT_OFF, arrival.stored, reason)])
        if kept or cut:
            log.info(
                "stopped: %d received studies staged for the next start, %d cut off",
                sum(1 for a in kept if a.stored),
                len(cut),
            )
