"""How a failed MLflow call is described and whether it makes the store unusable.

Reasons are PHI-free: the operation's error class or code, never server text (which can
echo values cad sent). :class:`cad.tracking.client.Tracker` turns *down* on the first
failure that makes the store unusable; :mod:`cad.tracking.registry` reports the same
transport failures.
"""

from __future__ import annotations

import math
import os

from mlflow.exceptions import MlflowException

from cad.tracking.store_check import BrokenStore

# MlflowException codes that mean "this request was wrong", not "the store is unusable".
REQUEST_ERRORS = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
}
AUTH_ERRORS = {  # the team server's basic auth (never echo the credentials themselves)
    "UNAUTHENTICATED": "the tracking server refused the credentials (HTTP 401): set "
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment",
    "PERMISSION_DENIED": "the tracking server denied this user access (HTTP 403): ask its "
    "admin for EDIT permission on the experiment",
}


def transport_error(exc: BaseException) -> str | None:
    """'timed out' / 'connection failed' / 'database error' if that caused ``exc``."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        module, name = type(err).__module__, type(err).__name__
        if isinstance(err, TimeoutError) or "Timeout" in name:
            return "timed out"
        if isinstance(err, ConnectionError) or module.startswith(("requests", "urllib3")):
            return "connection failed"
        if module.startswith("sqlalchemy") and name == "OperationalError":
            return "database error"
        err = err.__cause__ or err.__context__
    return None


def describe(exc: BaseException) -> tuple[str, bool]:
    """(PHI-free reason, whether the tracking store is unusable)."""
    if isinstance(exc, BrokenStore):  # our own message: the file and the fix
        return str(exc), True
    transport = transport_error(exc)
    if transport is not None:
        return f"{transport} ({type(exc).__name__})", True
    if isinstance(exc, MlflowException) and exc.error_code in AUTH_ERRORS:
        return AUTH_ERRORS[exc.error_code], True
    if isinstance(exc, MlflowException):
        return f"{type(exc).__name__} {exc.error_code}", exc.error_code not in REQUEST_ERRORS
    return type(exc).__name__, False


def configure_http(retries: int, timeout_s: float) -> None:
    """Bound MLflow's HTTP retries and timeouts (mlflow reads these at every request)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max(0, int(retries)))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
