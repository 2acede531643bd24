"""A worker task for the crash test, in a module that imports nothing heavy (spawned
workers import it by name)."""

from __future__ import annotations

import os


def crash_on_two(value: int) -> str:
    """Kill the worker process (like a segfaulting decoder) for value 2."""
    if value == 2:
        os._exit(3)
    return f"ok {value}"
