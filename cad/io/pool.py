"""The one worker pool: forkserver processes, bounded tasks in flight, results in task
order, a dead worker costs only its own task, and no worker outlives the parent.

Built on ``concurrent.futures.ProcessPoolExecutor`` with a forkserver context. Two things
it does not do are written here: crash isolation (a dead worker breaks the whole
executor and fails every pending future, so the pool restarts it, re-runs the innocent
tasks and gives up only the culprit) and ending workers with their parent (executor
workers are children of the fork server and block on a queue whose write end they hold
themselves, so a killed parent left them running: issue 16).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cad.errors import CadError

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """forkserver where available, else spawn; never plain fork.

    A parent running torch threads would hand forked children a broken thread state. The
    fork server is a fresh process that imports ``preload`` once (the first pool of a
    process starts it); workers fork from it, so they start in milliseconds.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this worker when its parent (the fork server, which
    itself exits when the main process goes) dies, however the main process ended."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if parent == 1:  # already orphaned
        os._exit(1)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _init_worker(initializer: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent ends the workers
    _die_with_parent()
    if initializer is not None:
        initializer()


def _ping() -> bool:
    return True


def _raise_crash(*task: Any) -> Any:
    raise CadError(
        "a worker process died (a crashing decoder or the out-of-memory killer); "
        "rerun with fewer workers, or with workers 0 to see the error in this process"
    )


class WorkerPool:
    """``workers`` processes (0: everything runs in this process), used as a context.

    Leaving the context on an exception (Ctrl-C included) kills the workers at once
    instead of waiting for their tasks.
    """

    def __init__(
        self,
        workers: int,
        *,
        initializer: Callable[[], None] | None = None,
        preload: Sequence[str] = ("cad.io.reader",),
    ) -> None:
        self.workers = max(int(workers), 0)
        self.initializer = initializer
        self.preload = tuple(preload)
        self._pool: ProcessPoolExecutor | None = None
        self._ping: Future | None = None
        self._started = False  # workers came up once: a later crash is not a start failure

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def start(self) -> None:
        """Start booting the workers now; they get ready while the caller does other work."""
        if self.workers > 0 and self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=_context(self.preload),
                initializer=_init_worker,
                initargs=(self.initializer,),
            )
            # one ping per worker: the executor forks a worker per task while none is idle,
            # so all start now, not mid-run (a fork racing a shutdown prints a traceback)
            pings = [self._pool.submit(_ping) for _ in range(self.workers)]
            self._ping = pings[0]

    def close(self) -> None:
        """Wait for running tasks, then end the workers."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Kill the workers now (their tasks are abandoned) and release the pool."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The executor has no public way to stop running tasks before Python 3.14
        # (terminate_workers); its process table is the only handle on them.
        processes = list(getattr(pool, "_processes", {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(5)

    def _executor(self) -> ProcessPoolExecutor:
        self.start()
        assert self._pool is not None
        return self._pool

    def _restart(self) -> None:
        """Replace a broken pool; raise CadError if workers cannot even start."""
        with contextlib.suppress(BrokenProcessPool):
            self._started = self._started or bool(self._ping and self._ping.result())
        self.terminate()
        if not self._started:  # a fresh pool must answer a ping, or workers cannot start
            self._executor()
            try:
                self._started = bool(self._ping and self._ping.result())
            except BrokenProcessPool:
                self.terminate()
                raise CadError(
                    "worker processes could not start. From a Python script, call cad under "
                    "`if __name__ == '__main__':` (workers start from a fork server and "
                    "import the main module), or use 0 workers"
                ) from None

    def imap(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple],
        inflight: int | None = None,
        on_crash: Callable[..., Any] | None = None,
    ) -> Iterator[Any]:
        """``fn(*task)`` for each task, results in task order, at most ``inflight``
        (default ``2 x workers``) submitted and not yet yielded. A task whose worker died
        gives ``on_crash(*task)`` (default: raise CadError)."""
        on_crash = on_crash or _raise_crash
        if self.workers <= 0:
            for task in tasks:
                yield fn(*task)
            return
        limit = max(inflight or 2 * self.workers, 1)
        pending: deque[tuple[tuple, Future]] = deque()
        source = iter(tasks)

        def refill() -> None:
            while len(pending) < limit:
                task = next(source, None)
                if task is None:
                    return
                pending.append((task, self._submit(fn, task)))

        refill()
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                others = [t for t, _ in pending]
                pending.clear()
                self._restart()
                result = self._alone(fn, task, on_crash)
                for other in others:  # innocent until their own retry says otherwise
                    pending.append((other, self._submit(fn, other)))
            yield result
            refill()

    def _submit(self, fn: Callable[..., Any], task: tuple) -> Future:
        """Submit, or a failed future when a worker already died (the pool refuses work
        then): the caller's crash handling sees it like any other broken task."""
        try:
            return self._executor().submit(fn, *task)
        except BrokenProcessPool as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _alone(self, fn: Callable[..., Any], task: tuple, on_crash: Callable[..., Any]) -> Any:
        """Run a task that was in flight when a worker died on its own: the culprit
        crashes again and gets ``on_crash``; an innocent task gets its result."""
        try:
            return self._executor().submit(fn, *task).result()
        except BrokenProcessPool:
            self._restart()
            return on_crash(*task)
