"""The outputs side of ``cad listen``: each complete study in the staging area is scored by
:func:`cad.scoring.api.score_folder` (the path of ``cad score``) and appended to the
outputs (:mod:`cad.pacs.ledger`), its results optionally stored into the PACS, and every
outcome written to ``<out stem>.received.csv`` (pseudonyms only): ``scored``,
``score-failed``, ``not-an-image``, ``unreadable``, ``not-stored``, ``already-scored``,
``cut-off``, ``results-stored``, ``send-failed``.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cad.errors import CadError, look_up_option
from cad.io.files import refuse_symlink
from cad.pacs.ledger import Ledger
from cad.pacs.receiver import Arrival
from cad.pacs.staging import Staging, default_staging
from cad.phi import Pseudonymizer, load_secret

log = logging.getLogger("cad.pacs")

RECEIVED_HEADER = ("study", "patient", "outcome", "instances", "reason")
SCORED, SCORE_FAILED, CUT_OFF = "scored", "score-failed", "cut-off"
SENT, SEND_FAILED = "results-stored", "send-failed"
LEVELS = ("slice", "series")  # a patient row would cover one study: the listener sees one


def received_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.received.csv")


@dataclass
class ListenOptions:
    model: str
    out: Path
    aet: str = "CAD"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_aet: list[str] = field(default_factory=list)
    study_timeout: float = 30.0
    on_release: bool = True
    errors: Path | None = None
    staging: Path | None = None
    keep_staged: bool = False
    level: str = "slice"
    batch_size: int = 64
    workers: int = 2
    tracking_uri: str | None = None
    dicom_out: Path | None = None
    report_dir: Path | None = None  # an HTML report per scored study (cad score --report-dir)
    report_phi: bool = False
    report_pdf: bool = False
    pacs: str | None = None  # --send-results: store the --dicom-out results here
    calling_aet: str = "CAD"
    poll: float = 0.5  # seconds between checks for complete studies


class StudyScorer:
    """The staging area, the outputs and the scoring of one staged study at a time."""

    def __init__(self, opts: ListenOptions) -> None:
        look_up_option(opts.level, LEVELS, "--level")
        if opts.study_timeout <= 0:
            raise CadError(f"--study-timeout must be > 0 seconds; got {opts.study_timeout}")
        self.opts = opts
        out = opts.out
        self.errors = opts.errors or out.with_name(f"{out.stem}.errors.csv")
        self.received = received_path(out)
        for path, option in ((out, "--out"), (self.errors, "--errors")):
            refuse_symlink(path, option)
        refuse_symlink(self.received, "--out's received CSV")
        self.pseudo = Pseudonymizer(load_secret(out.parent))  # the secret beside the outputs
        fingerprint = self._fingerprint()  # a bad model: refused before anything is made
        self._lock = self._only_listener(out)
        self.area = Staging(opts.staging or default_staging(out)).open()
        self.ledger = Ledger(out, self.errors, fingerprint).open()
        if not self.received.exists():
            self.rows([RECEIVED_HEADER])

    @staticmethod
    def _only_listener(out: Path):
        """An flock on ``<out>.listen.lock`` for the process's life: a second listener on
        the same outputs is refused (the kernel drops the lock when a process dies)."""
        import fcntl

        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(out.with_name(out.name + ".listen.lock"), "a")  # noqa: SIM115 - held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CadError(
                f"another cad listen writes to {out}; stop it, or pass another --out"
            ) from None
        return handle

    def _fingerprint(self) -> dict:
        """The model (by its checksums, keyed), --level and --dicom-out: what the rows
        depend on. Resolving the model here also refuses a bad one before listening."""
        import tempfile

        from cad.artifacts.model_package import SUMS, read_meta, verify_package
        from cad.scoring.api import resolve_model

        with tempfile.TemporaryDirectory(prefix="cad-model-") as tmp:
            package = resolve_model(self.opts.model, self.opts.tracking_uri, Path(tmp))
            verify_package(package)  # checksums and model.json: a bad model ends here
            read_meta(package)
            sums = (package / SUMS).read_text()
        return {
            "model": self.pseudo.key("model", sums, 32),
            "level": self.opts.level,
            "dicom_out": self.opts.dicom_out is not None,
            "report_dir": self.opts.report_dir is not None,
        }

    # -- the outcome rows

    def rows(self, rows: list) -> None:
        with open(self.received, "a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def report(self, arrival: Arrival) -> None:
        if arrival.reported:
            return
        arrival.reported = True
        rows = [
            (arrival.study, arrival.patient, outcome, n, reason)
            for (outcome, reason), n in sorted(arrival.refused.items())
        ]
        for _, _, outcome, n, reason in rows:
            log.warning("study %s: %s, %d instance(s): %s", arrival.study, outcome, n, reason)
        self.rows(rows)

    # -- scoring

    def score_staged(self, study: str, patient: str = "") -> None:
        """Score ``studies/<study>`` into the outputs (once), then drop the staged copy."""
        from cad.scoring.api import score_folder

        folder = self.area.studies / study
        if study not in self.ledger.scored:
            out = self.opts.out
            part = out.with_name(f".{out.stem}.{study}.csv")  # beside --out: the same secret
            part_errors = part.with_name(f".{out.stem}.{study}.errors.csv")
            try:
                summary = score_folder(
                    self.opts.model,
                    folder,
                    part,
                    errors=part_errors,
                    level=self.opts.level,
                    batch_size=self.opts.batch_size,
                    workers=self.opts.workers,
                    tracking_uri=self.opts.tracking_uri,
                    dicom_out=self.opts.dicom_out,
                    report_dir=self.opts.report_dir,
                    report_phi=self.opts.report_phi,
                    report_pdf=self.opts.report_pdf,
                    progress=False,
                )
                counts = {"slices": summary.slices, "not_scored": summary.error_files}
                self.ledger.append(study, part, part_errors, counts)
            except CadError as exc:  # e.g. the MLflow server is down: keep it for a restart
                self.rows([(study, patient, SCORE_FAILED, 0, f"{exc}; staged for the next start")])
                log.error("study %s: not scored: %s; it stays staged", study, exc)
                return
            finally:
                for path in (part, part_errors, part.with_name(part.name + ".progress.json")):
                    path.unlink(missing_ok=True)
            reason = f"{summary.slices} slices scored"
            if summary.error_files:
                reason += f"; {summary.error_files} files not scored (see {self.errors.name})"
            self.rows([(study, patient, SCORED, summary.files, reason)])
            log.info("study %s: %s", study, reason)
            self._send(study, patient)
        if not self.opts.keep_staged:
            shutil.rmtree(folder, ignore_errors=True)

    def _send(self, study: str, patient: str) -> None:
        if self.opts.pacs is None or self.opts.dicom_out is None:
            return
        from cad.pacs.errors import PacsError
        from cad.pacs.send import send_results

        folder = self.opts.dicom_out / study
        if not folder.is_dir():
            return
        try:
            report = send_results(self.opts.pacs, folder, self.opts.calling_aet)
        except PacsError as exc:
            self.rows([(study, patient, SEND_FAILED, 0, str(exc))])
            log.warning("study %s: results not stored into the PACS: %s", study, exc)
            return
        if report.stored:
            self.rows([(study, patient, SENT, len(report.stored), f"into {report.pacs}")])
        if report.failed:
            reason = "; ".join(sorted({str(e) for e in report.failed.values()}))
            self.rows([(study, patient, SEND_FAILED, len(report.failed), reason)])

    def catch_up(self) -> int:
        """Score what a previous listener staged but did not score; return how many."""
        waiting = sorted(s for s in self.area.staged() if s not in self.ledger.scored)
        for study in sorted(self.area.staged()):
            self.score_staged(study, self._patient(study))
        return len(waiting)

    def _patient(self, study: str) -> str:
        """The patient pseudonym of a staged study (from one of its files)."""
        import pydicom

        for path in sorted((self.area.studies / study).iterdir()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
            except Exception:  # noqa: BLE001, S112 - the scorer reports unreadable files
                continue
            return self.pseudo.patient(str(ds.get("PatientID") or ""))
        return ""
