"""Batches slices across studies, runs the model, and turns probabilities into rows.

Studies arrive in output order; their slices are cut into fixed-size batches regardless of
study boundaries, and a study is released (in order) as soon as its last slice has a
probability. Inference is what ``evaluate`` does: ``LoadedModel.prepare_images`` (the
package's denoiser, if any), then a :class:`cad.finetune.predict.Predictor` built once
per run, so scores match the pipeline's for the same slices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cad.device import Runtime
from cad.finetune.model import TransferModel
from cad.finetune.predict import Predictor
from cad.scoring.cam import CamWriter
from cad.scoring.stream import StudyResult


@dataclass
class Scored:
    """A study whose slices all have probabilities (``probs`` is empty if unusable)."""

    result: StudyResult
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # (k, C, H, W) of the k most suspicious slices, highest first (with keep_top=k)
    top_images: np.ndarray | None = None

    @property
    def top_image(self) -> np.ndarray | None:
        """(C, H, W) of the most suspicious slice (kept with keep_top >= 1)."""
        return None if self.top_images is None or not len(self.top_images) else self.top_images[0]


class Batcher:
    """Accumulates slices of consecutive studies and predicts them ``batch_size`` at a time."""

    def __init__(
        self,
        model: TransferModel,
        runtime: Runtime,
        batch_size: int,
        threshold: float,
        cam: CamWriter | None = None,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
        calibrate: Callable[[np.ndarray], np.ndarray] | None = None,
        keep_top: int = 0,
    ) -> None:
        self.predict = Predictor(model, runtime, batch_size)
        self.prepare = prepare  # LoadedModel.prepare_images: e.g. the package's denoiser
        self.calibrate = calibrate  # LoadedModel.calibrate: the package's calibration
        self.batch_size = batch_size
        self.threshold = threshold
        self.cam = cam
        self.keep_top = int(keep_top)  # keep each study's k most suspicious slices (key images)
        self.forward_slices = 0
        self._pending: deque[tuple[StudyResult, np.ndarray, int]] = deque()  # study, probs, done
        self._queued = 0  # slices waiting for a forward pass

    def add(self, result: StudyResult) -> Iterator[Scored]:
        """Queue a study; yield every study (in order) that is now fully predicted."""
        self._pending.append((result, np.zeros(result.slices, np.float32), 0))
        self._queued += result.slices
        while self._queued >= self.batch_size:
            self._predict(self.batch_size)
        yield from self._release()

    def flush(self) -> Iterator[Scored]:
        """Predict what is left and release every remaining study."""
        if self._queued:
            self._predict(self._queued)
        yield from self._release()

    def _predict(self, count: int) -> None:
        parts, owners = [], []  # (pending index, start, stop)
        need = count
        for i, (result, _, done) in enumerate(self._pending):
            if need == 0:
                break
            if done == result.slices:
                continue
            take = min(need, result.slices - done)
            parts.append(result.images[done : done + take])
            owners.append((i, done, done + take))
            need -= take
        images = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.prepare is not None:
            images = self.prepare(images)
        probs = self.predict(images)
        if self.calibrate is not None:
            probs = self.calibrate(probs)
        self.forward_slices += len(images)
        offset = 0
        for i, start, stop in owners:
            result, study_probs, _ = self._pending[i]
            study_probs[start:stop] = probs[offset : offset + stop - start]
            self._pending[i] = (result, study_probs, stop)
            offset += stop - start
        self._queued -= len(images)
        if self.cam is not None:
            self._cams(images, probs, owners)

    def _cams(self, images: np.ndarray, probs: np.ndarray, owners: list) -> None:
        samples = [self._pending[i][0].samples[j] for i, a, b in owners for j in range(a, b)]
        positive = np.flatnonzero(probs >= self.threshold)
        self.cam.write(images[positive], [samples[j] for j in positive], probs[positive])

    def _release(self) -> Iterator[Scored]:
        while self._pending and self._pending[0][2] == self._pending[0][0].slices:
            result, probs, _ = self._pending.popleft()
            top = None
            if self.keep_top and result.slices:
                order = np.argsort(-probs.astype(np.float64), kind="stable")[: self.keep_top]
                top = result.images[order].copy()  # the same order as dicom_sr.top_slices
            result.images = None  # pixels are no longer needed: free them now
            yield Scored(result, probs, top)


@dataclass
class Aggregate:
    """Running max / mean / positive count of slice probabilities."""

    slices: int = 0
    positive: int = 0
    peak: float = 0.0
    total: float = 0.0

    def add(self, probs: np.ndarray, threshold: float) -> None:
        if len(probs):
            self.slices += len(probs)
            self.positive += int(np.sum(probs >= threshold))
            self.peak = max(self.peak, float(np.max(probs)))
            self.total += float(np.sum(probs, dtype=np.float64))

    def row(self, level: str, patient: str, study: str = "", series: str = "") -> list:
        mean = self.total / self.slices
        return [
            level,
            patient,
            study,
            series,
            "",
            "",
            "",
            "",
            int(self.positive > 0),
            self.slices,
            self.positive,
            f"{self.peak:.6f}",
            f"{mean:.6f}",
        ]


def slice_rows(scored: Scored, threshold: float) -> list[list]:
    """One predictions.csv row per slice (columns: ``writers.PREDICTION_COLUMNS``)."""
    r = scored.result
    return [
        [
            "slice",
            r.patient,
            r.study,
            r.series,
            instance,
            index,
            sample,
            f"{p:.6f}",
            int(p >= threshold),
            "",
            "",
            "",
            "",
        ]
        for index, (instance, sample, p) in enumerate(
            zip(r.instances, r.samples, scored.probs, strict=True)
        )
    ]
