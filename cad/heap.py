"""Keep freed tensor-sized memory in the process heap for reuse (glibc only).

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB) with
fresh pages from the kernel and unmaps them on free. A CNN forward allocates and frees
the same large activations every batch (ResNet50 at 224 px, batch 64: ~100 MB per early
layer), so each batch faults in and zero-fills them again: on a 2-core CPU that was about
40% of the forward's CPU time, and cad's forward ran 1.9x faster with reuse than without
(``benchmarks/bench_forward.py`` measures it). With mmap off and automatic trimming off,
freed blocks stay in the heap and the next batch reuses them without a fault; peak memory
is unchanged (it is the same activations), only the kernel round trips go.

Written by hand because no library does this in-process: PyTorch's CPU tuning guide
preloads jemalloc or tcmalloc, which needs LD_PRELOAD before the interpreter starts.
``CAD_HEAP_TUNING=0`` leaves the C library's defaults alone.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc <malloc.h>
_GLIBC_MMAP_MAX, _GLIBC_MMAP_THRESHOLD_MAX = 65536, 32 * 2**20  # glibc's defaults / limit
_TRIM_NEVER = 2**31 - 1
_state = {"tuned": False}


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the C library this interpreter is linked against
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Make freed large blocks reusable without page faults; True if in effect.

    Idempotent and process-wide: the heavy CLI commands (``cad run``, ``cad score``,
    ``cad listen``) call it at start-up and decode workers call it; the Python API does
    not change a caller's heap, so a script calls it itself (scoring through
    ``score_folder`` without it ran the forward 2x slower).
    A no-op (False) on other C libraries or with ``CAD_HEAP_TUNING=0``.
    """
    if _state["tuned"]:
        return True
    if os.environ.get("CAD_HEAP_TUNING", "1") == "0" or (libc := _glibc()) is None:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    _state["tuned"] = ok
    return ok


def glibc_default_like() -> None:
    """Undo :func:`reuse_freed_memory` as far as glibc allows (benchmarks only).

    glibc's adaptive thresholds cannot be switched back on, so this sets their steady
    state: mmap for blocks above 32 MiB, as a plain script's process ends up after its
    first large free.
    """
    if (libc := _glibc()) is not None:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)
    _state["tuned"] = False
