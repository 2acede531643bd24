"""One scoring run over an indexed folder: stream studies, predict, write, commit per patient.

Output order is the order of ``FolderIndex.studies`` (patient key, then study key), so a
patient's studies are contiguous: its aggregate row can follow its last study, and the
unit of resume is a finished patient.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cad.device import Runtime
from cad.errors import CadError
from cad.finetune.model import TransferModel
from cad.finetune.package import LoadedModel
from cad.io.index import FolderIndex, StudyTask
from cad.io.pool import WorkerPool
from cad.scoring.cam import CamWriter
from cad.scoring.infer import Aggregate, Batcher, Scored, slice_rows
from cad.scoring.stream import StudyResult, iter_studies
from cad.scoring.summary import ScoreSummary, progress_or_nothing, summary_from_counts
from cad.scoring.writers import Outputs, State

if TYPE_CHECKING:  # highdicom is imported only with --dicom-out / --report-dir
    from cad.scoring.dicom_sr import SrWriter
    from cad.scoring.report import ReportWriter

log = logging.getLogger("cad.scoring")


def _patients(studies: list[StudyTask]) -> list[str]:
    return [task.patient for task in studies if task.last_of_patient]


class Run:
    """Holds the model and options; ``execute`` does one pass and returns the summary."""

    def __init__(
        self,
        loaded: LoadedModel,
        model: TransferModel,
        runtime: Runtime,
        secret: bytes,
        level: str,
        batch_size: int,
        cam_dir: Path | None,
        on_commit: Callable[[int], None] | None,
        dicom_results: SrWriter | None = None,
        report: ReportWriter | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = model  # loaded.model prepared for the runtime
        self.threshold = loaded.threshold
        self.spec = loaded.input_spec
        self.runtime = runtime
        self.secret = secret
        self.level = level
        self.batch_size = batch_size
        self.cam_dir = cam_dir
        self.on_commit = on_commit
        self.dicom_results = dicom_results  # --dicom-out: an SR per scored study
        self.report = report  # --report-dir: an HTML (and PDF) report per scored study

    def execute(
        self,
        index: FolderIndex,
        pool: WorkerPool,
        out: Path,
        errors: Path,
        key_map: Path | None,
        fingerprint: dict,
        resume: bool,
        show_progress: bool,
        segments: bool = False,
    ) -> ScoreSummary:
        outputs = Outputs(out, errors, key_map, fingerprint, resume, segments)
        try:
            summary = self._execute(index, pool, outputs, key_map is not None, show_progress)
        finally:
            outputs.close()
        summary.resumed = outputs.resumed
        return summary

    def _execute(
        self,
        index: FolderIndex,
        pool: WorkerPool,
        outputs: Outputs,
        key_map: bool,
        show_progress: bool,
    ) -> ScoreSummary:
        state = outputs.state
        self.counts = state.counts or {
            "errors": {},
            "studies": 0,
            "studies_scored": 0,
            "slices": 0,
            "scored_files": 0,
            "skipped": 0,
            "cams": 0,
            "dicom_results": 0,
        }
        if not state.header_done:
            outputs.write("errors", index.errors)
            if key_map:
                outputs.write(
                    "key_map",
                    [
                        (row[0], "path", path)
                        for row, path in zip(index.errors, index.error_paths, strict=True)
                    ],
                )
            self._count_errors(index.errors)
            self.counts["skipped"] += index.side_files  # cad's own files next to the data
            outputs.commit(State(0, "", self.counts, header_done=True))
        patients = _patients(index.studies)
        done = outputs.state.patients_done
        if done and (done > len(patients) or patients[done - 1] != outputs.state.last_patient):
            raise CadError(
                "--resume: the progress file does not match this folder; rerun "
                "without --resume to start over"
            )
        if outputs.resumed:
            log.info("resuming: %d of %d patients were already scored", done, len(patients))
        if not outputs.state.complete:
            todo = self._todo(index.studies, done)
            self._score(todo, pool, outputs, key_map, done, show_progress)
            outputs.commit(
                State(
                    len(patients),
                    patients[-1] if patients else "",
                    self.counts,
                    header_done=True,
                    complete=True,
                )
            )
        return summary_from_counts(self.counts, index.files)

    @staticmethod
    def _todo(studies: list[StudyTask], patients_done: int) -> list[StudyTask]:
        seen = 0
        for i, task in enumerate(studies):
            if seen == patients_done:
                return studies[i:]
            seen += task.last_of_patient
        return []

    def _count_errors(self, rows: list) -> None:
        merged = Counter(self.counts["errors"]) + Counter(outcome for _, outcome, _ in rows)
        self.counts["errors"] = dict(sorted(merged.items()))

    def _score(
        self,
        todo: list[StudyTask],
        pool: WorkerPool,
        outputs: Outputs,
        key_map: bool,
        patients_done: int,
        show_progress: bool,
    ) -> None:
        cam = None
        if self.cam_dir is not None:
            cam = CamWriter(self.model, self.cam_dir, self.runtime.device)
        batcher = Batcher(
            self.model,
            self.runtime,
            self.batch_size,
            self.threshold,
            cam,
            self.loaded.prepare_images,
            self.loaded.calibrate,
            keep_top=self._keep_top(),
        )
        self._start(todo, outputs, cam, patients_done)
        inflight = max(2 * pool.workers, 2)
        studies = iter_studies(todo, self.spec, self.secret, pool, key_map, inflight)
        self._drain(studies, batcher, todo, show_progress)

    def _start(
        self, todo: list[StudyTask], outputs: Outputs, cam: CamWriter | None, patients_done: int
    ) -> None:
        """The per-run state :meth:`_write` keeps, for whichever executor feeds it."""
        self._outputs, self._cam, self._done = outputs, cam, patients_done
        self._patient, self._patient_agg = "", Aggregate()
        self._tasks = {(t.patient, t.study): t for t in todo}  # the files behind each result

    def _drain(
        self, studies: Iterable[StudyResult], batcher: Any, todo: list[StudyTask], show: bool
    ) -> None:
        """Decoded studies through ``batcher`` (``add``/``flush``, in order) into the outputs."""
        total = sum(len(task.paths) for task in todo)
        with progress_or_nothing(show, "score", total, "files") as advance:
            for result in studies:
                for scored in batcher.add(result):
                    self._write(scored)
                    advance(scored.result.files)
            for scored in batcher.flush():
                self._write(scored)
                advance(scored.result.files)

    def _keep_top(self) -> int:
        """How many of each study's most suspicious slices the writers need."""
        keep = 0
        if self.dicom_results is not None and self.dicom_results.key_images:
            keep = 1
        if self.report is not None:
            keep = max(keep, self.report.k)
        return keep

    def _write(self, scored: Scored) -> None:
        r, outputs, counts = scored.result, self._outputs, self.counts
        first_of_patient = r.patient != self._patient
        if first_of_patient:
            self._patient, self._patient_agg = r.patient, Aggregate()
        key_rows = (
            r.key_rows if first_of_patient else [row for row in r.key_rows if row[1] != "PatientID"]
        )
        if len(scored.probs):
            outputs.write("predictions", slice_rows(scored, self.threshold))
            study_agg = Aggregate()
            study_agg.add(scored.probs, self.threshold)
            self._patient_agg.add(scored.probs, self.threshold)
            if self.level == "series":
                outputs.write(
                    "predictions", [study_agg.row("series", r.patient, r.study, r.series)]
                )
            counts["studies_scored"] += 1
            counts["slices"] += study_agg.slices
            if self._cam is not None and self._cam.enabled:
                counts["cams"] += study_agg.positive
            if self.dicom_results is not None:
                task = self._tasks[(r.patient, r.study)]
                wrote = self.dicom_results.write(scored, task)
                counts["dicom_results"] = counts.get("dicom_results", 0) + wrote
            if self.report is not None:
                task = self._tasks[(r.patient, r.study)]
                counts["reports"] = counts.get("reports", 0) + self.report.write(scored, task)
        counts["studies"] += r.readable
        counts["scored_files"] += r.scored_files
        counts["skipped"] += r.skipped
        outputs.write("errors", r.errors)
        self._count_errors(r.errors)
        outputs.write("key_map", key_rows)
        if r.last_of_patient:
            if self.level == "patient" and self._patient_agg.slices:
                outputs.write("predictions", [self._patient_agg.row("patient", r.patient)])
            self._done += 1
            outputs.commit(State(self._done, r.patient, counts, header_done=True))
            if self.on_commit is not None:
                self.on_commit(self._done)
