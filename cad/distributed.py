"""Data-parallel ranks under torchrun: who this process is, and the few collectives cad uses.

``torchrun --nproc_per_node N -m cad run ...`` starts N copies of ``cad run``; torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Rank 0 runs
the pipeline; the other ranks only join its fine-tuning (:mod:`cad.pipeline.data_parallel`).
Two process groups: the training group (NCCL on GPUs, gloo on CPU, the backend that
:func:`cad.device.distributed_backend` picks), and a gloo *control* group with a long
timeout on which ranks > 0 wait for rank 0's next fine-tuning job while it runs the other
stages. torch.distributed does the communication; this module only adds the padding that
lets ranks holding different numbers of rows exchange them without hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cad.errors import CadError

log = logging.getLogger("cad.distributed")

_STOP = {"job": "stop"}


def launched_world_size() -> int:
    """How many ranks torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo group for job messages (None: the default group)

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes artifacts, checkpoints, logs and MLflow runs."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of ``n`` rows (``np.array_split``'s
        division: the first ``n % size`` ranks hold one row more; a rank may hold none)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def part(self, rows: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds(len(rows))
        return rows[lo:hi]

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order, on every rank.

        Ranks may hold different numbers of rows (none included): sizes are exchanged
        first, each rank pads to the largest, and the padding is cut off again, so the
        collective has equal shapes everywhere and cannot hang.
        """
        if self.size == 1:
            return local
        import torch.distributed as dist

        shapes: list[Any] = [None] * self.size
        dist.all_gather_object(shapes, (tuple(local.shape), str(local.dtype)))
        rows = [shape[0] for shape, _ in shapes]
        # a rank holding no rows has no trailing shape or dtype of its own: take a holder's
        shape, dtype_name = next((s for s in shapes if s[0][0] > 0), shapes[0])
        trailing, dtype = shape[1:], getattr(torch, dtype_name.removeprefix("torch."))
        padded = torch.zeros((max(rows), *trailing), dtype=dtype, device=local.device)
        if len(local):
            padded[: len(local)] = local
        out = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(out, padded)
        return torch.cat([part[:n] for part, n in zip(out, rows, strict=True)])

    def total(self, value: float) -> float:
        """The sum of ``value`` over the ranks."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, group=self.control)
        return float(tensor.item())

    def from_writer(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. the early-stopping decision)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def all_equal(self, value: str) -> bool:
        if self.size == 1:
            return True
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self.control)
        return len(set(values)) == 1

    def announce(self, job: Mapping[str, Any]) -> None:
        """Rank 0: tell the other ranks what to train next (they wait in :meth:`next_job`)."""
        if self.size > 1:
            self.from_writer(dict(job))

    def next_job(self) -> dict[str, Any] | None:
        """Ranks > 0: rank 0's next job, or None when its run is over."""
        job = self.from_writer(None)
        return None if job == _STOP else job

    def stop(self) -> None:
        """Rank 0: the run is over; the other ranks leave :meth:`next_job` and exit."""
        if self.size > 1:
            self.from_writer(dict(_STOP))


SINGLE = World()
_current = SINGLE


def current() -> World:
    """The world this process joined (:data:`SINGLE` outside torchrun)."""
    return _current


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters: equal on every rank after a data-parallel step, or
    the ranks have diverged. Buffers are left out: without SyncBatchNorm each rank's last
    step updates its own BatchNorm statistics (DDP copies rank 0's before every forward,
    and rank 0's are the ones published)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def joined(mode: str = "auto", wait_s: float = 86400.0) -> Iterator[World]:
    """Join torchrun's ranks for the duration of a run (``mode`` ``off``, or one process:
    :data:`SINGLE`). ``wait_s`` bounds how long ranks > 0 wait for rank 0's next job."""
    global _current
    size = launched_world_size()
    if mode == "off" or size == 1:
        yield SINGLE
        return
    import torch.distributed as dist

    from cad.device import distributed_backend

    missing = [
        v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise CadError(
            f"WORLD_SIZE={size} but {', '.join(missing)} unset: start data-parallel runs "
            "with torchrun --nproc_per_node N -m cad run ..."
        )
    backend = distributed_backend()
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=wait_s))
    world = World(dist.get_rank(), dist.get_world_size(), local_rank, control)
    log.info("data-parallel rank %d of %d (%s)", world.rank, world.size, backend)
    _current = world
    try:
        yield world
    finally:
        _current = SINGLE
        dist.destroy_process_group()
