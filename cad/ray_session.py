"""Connecting to Ray, for the two places that use it (backbone chains, scoring).

Without an address (and without ``RAY_ADDRESS``) a machine-local Ray instance starts on
127.0.0.1 and stops again at the end; with one, cad joins that cluster. Ray is imported
only here and only when asked for (the optional extra ``cad[ray]``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from cad.errors import CadError

LOOPBACK = ("127.0.0.1", "localhost")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CadError(
            "--executor ray needs Ray: pip install 'cad[ray]' (or pip install 'ray[default]')"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module, initialised for the duration (unless it already was)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # On Linux Ray resolves loopback to the host's address and listens on every interface;
        # this (documented) switch keeps a machine-local instance on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = (
            {"address": address}
            if address
            else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        )
        if address and address.split("://")[-1].split(":")[0] in LOOPBACK:
            kwargs["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: stay on loopback
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
