"""``cad score --executor ray``: study decoding as Ray Data CPU tasks, the forward in a pool
of long-lived model actors, rows written by this process in index order.

The folder's header pass and the output files are the local run's (:class:`Run`); only
``_score`` differs. The index's studies become a Ray Dataset split into blocks; each
study is decoded by :func:`process_study` (the local workers' function) in a CPU task,
and Ray Data keeps the index order (``preserve_order``). This process cuts the ordered
slices into exactly the local :class:`~cad.scoring.infer.Batcher`'s batches (a fixed
size across study boundaries) and runs each batch on one of the model actors, which
load the package once and apply the same denoiser, :class:`Predictor` and calibration.

Why the forward is not a Ray Data ``map_batches``: Ray Data forms batches per bundle of
blocks, and a slice's probability can depend on which slices share its batch (oneDNN picks
kernels by batch size: one ulp in fp32, measured), so regrouped batches would not be
byte-identical to a local run. Keeping the local batches makes them so.
"""

from __future__ import annotations

import logging
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cad.errors import CadError
from cad.io.index import StudyTask
from cad.io.pool import WorkerPool
from cad.ray_session import ray_session
from cad.scoring.infer import Scored
from cad.scoring.run import Run
from cad.scoring.stream import StudyResult, init_worker, process_study
from cad.scoring.writers import Outputs

log = logging.getLogger("cad.scoring")

STUDIES_PER_BLOCK = 8


def package_files(package: Path) -> dict[str, bytes]:
    """A model package's files by relative path: what the actors rebuild it from, so the
    package need not be on a filesystem every Ray node shares."""
    return {str(p.relative_to(package)): p.read_bytes() for p in package.rglob("*") if p.is_file()}


def refuse_unsupported(
    cam_dir: Path | None, dicom_out: Path | None, report_dir: Path | None = None
) -> None:
    options = (("--cam", cam_dir), ("--dicom-out", dicom_out), ("--report-dir", report_dir))
    for option, value in options:
        if value is not None:
            raise CadError(f"{option} is not available with --executor ray; score locally")


class ModelActor:
    """One long-lived forward worker: the package loaded once, then batch after batch."""

    def __init__(self, files: dict[str, bytes], batch_size: int) -> None:
        from cad.device import select_runtime
        from cad.finetune.package import load_package
        from cad.finetune.predict import Predictor

        with tempfile.TemporaryDirectory(prefix="cad-model-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            self.loaded = load_package(Path(tmp))  # checksums verified first
        runtime = select_runtime("auto")
        self.predict = Predictor(runtime.prepare(self.loaded.model), runtime, batch_size)

    def score(self, images: np.ndarray) -> np.ndarray:
        """What the local Batcher does with one batch: denoiser, forward, calibration."""
        probs = self.predict(self.loaded.prepare_images(images))
        return self.loaded.calibrate(probs)


def _decode(row: dict[str, Any], spec: Any, secret: bytes, key_map: bool) -> dict[str, Any]:
    init_worker()  # one thread per decode task, as in the local workers
    return {"result": process_study(row["task"], spec, secret, key_map)}


class _Pending:
    """A study in flight: its probabilities, how many slices are batched and returned."""

    __slots__ = ("cut", "done", "probs", "result")

    def __init__(self, result: StudyResult) -> None:
        self.result, self.probs = result, np.zeros(result.slices, np.float32)
        self.cut = self.done = 0


class RemoteBatcher:
    """The local Batcher's batches, each scored by the next model actor in turn; studies
    are released in order once every slice of theirs has come back."""

    def __init__(self, ray: Any, actors: list[Any], batch_size: int) -> None:
        self.ray, self.actors, self.batch_size = ray, actors, batch_size
        self._pending: deque[_Pending] = deque()
        self._cut: deque[_Pending] = deque()  # studies whose slices are not all batched yet
        self._queued = 0
        self._inflight: deque[tuple[Any, list[tuple[_Pending, int, int]]]] = deque()
        self._submitted = 0

    def add(self, result: StudyResult) -> Iterator[Scored]:
        entry = _Pending(result)
        self._pending.append(entry)
        self._cut.append(entry)
        self._queued += result.slices
        while self._queued >= self.batch_size:
            self._submit(self.batch_size)
        while len(self._inflight) > 2 * len(self.actors):
            self._collect()
        yield from self._release()

    def flush(self) -> Iterator[Scored]:
        if self._queued:
            self._submit(self._queued)
        while self._inflight:
            self._collect()
        yield from self._release()

    def _submit(self, count: int) -> None:
        parts, owners, need = [], [], count
        while need:
            while self._cut[0].cut == self._cut[0].result.slices:  # done, or no slices
                self._cut.popleft()
            entry = self._cut[0]
            take = min(need, entry.result.slices - entry.cut)
            assert entry.result.images is not None
            parts.append(entry.result.images[entry.cut : entry.cut + take])
            owners.append((entry, entry.cut, entry.cut + take))
            entry.cut += take
            need -= take
        images = parts[0] if len(parts) == 1 else np.concatenate(parts)
        actor = self.actors[self._submitted % len(self.actors)]
        self._inflight.append((actor.score.remote(images), owners))
        self._submitted += 1
        self._queued -= len(images)

    def _collect(self) -> None:
        ref, owners = self._inflight.popleft()
        probs, offset = self.ray.get(ref), 0
        for entry, start, stop in owners:
            entry.probs[start:stop] = probs[offset : offset + stop - start]
            entry.done = stop
            offset += stop - start

    def _release(self) -> Iterator[Scored]:
        while self._pending and self._pending[0].done == self._pending[0].result.slices:
            entry = self._pending.popleft()
            entry.result.images = None
            yield Scored(entry.result, entry.probs)


def actor_resources(ray: Any) -> tuple[int, dict[str, float]]:
    """How many model actors, each with what: one per GPU when the cluster has GPUs; on
    CPUs, half the cluster's cores for the forward (the rest decode), at most 4 per actor."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    cpus = max(1, int(total.get("CPU", 1)))
    per_actor = max(1, min(4, cpus // 2))
    return max(1, cpus // (2 * per_actor)), {"num_cpus": per_actor}


class RayRun(Run):
    """A :class:`Run` whose decoding and forward run on Ray."""

    def __init__(self, files: dict[str, bytes], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.files = files

    def _score(
        self,
        todo: list[StudyTask],
        pool: WorkerPool,
        outputs: Outputs,
        key_map: bool,
        patients_done: int,
        show_progress: bool,
    ) -> None:
        self._start(todo, outputs, None, patients_done)
        if not todo:
            return
        with ray_session() as ray:
            count, resources = actor_resources(ray)
            actor_type = ray.remote(**resources)(ModelActor)
            files = ray.put(self.files)
            actors = [actor_type.remote(files, self.batch_size) for _ in range(count)]
            log.info("ray: %d model actor(s) (%s), decoding in CPU tasks", count, resources)
            batcher = RemoteBatcher(ray, actors, self.batch_size)
            self._drain(self._decoded(ray, todo, key_map), batcher, todo, show_progress)

    def _decoded(self, ray: Any, todo: list[StudyTask], key_map: bool) -> Iterator[StudyResult]:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the index order, as locally
        context.enable_progress_bars = False
        blocks = max(1, -(-len(todo) // STUDIES_PER_BLOCK))
        dataset = ray.data.from_items([{"task": t} for t in todo], override_num_blocks=blocks)
        decoded = dataset.map(
            _decode, fn_kwargs={"spec": self.spec, "secret": self.secret, "key_map": key_map},
            num_cpus=1,
        )  # fmt: skip
        for row in decoded.iter_rows():
            yield row["result"]
