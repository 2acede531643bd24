"""MLflow tracking that never kills work (:mod:`cad.tracking` is the only package that
imports mlflow).

``Tracker`` wraps one ``MlflowClient`` (no fluent global state: several runs can be open at
once). A failing call is logged on ``cad.tracking``, recorded PHI-free in ``failures`` (the
operation and error class, never server text, which can echo values we sent) and never
raised. The first failure that makes the store unusable (refused, timeout, server or database
error) turns the tracker *down*: later calls return at once, so an outage costs one wait.
MLflow's own telemetry, URL printing and progress bars are turned off by the CLI's entry
point (:func:`cad.cli.app.quiet_third_party`), before mlflow is first imported.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cad.tracking.failures import configure_http, describe
from cad.tracking.store_check import repair_sqlite_store

log = logging.getLogger("cad.tracking")

# MLflow's limits (mlflow.utils.validation).
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"

_TRUNCATED = "...[truncated]"
_FAILED: Any = object()  # sentinel: the guarded call failed or was skipped


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI to pick its views
TRAINING = "custom_model_development"


def redact_uri(uri: str) -> str:
    """The URI without user:password (safe for logs and reports)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def clean_key(key: str) -> str:
    """A valid MLflow param/metric/tag key: bad characters become ``_``; keys over 250
    characters are cut and end in a hash of the original, so they stay distinct."""
    text = re.sub(r"[^\w.\- /]", "_", str(key))
    text = "/".join("__" if p == ".." else p for p in text.split("/") if p not in ("", "."))
    text = text or "_"
    if len(text) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(str(key).encode()).hexdigest()[:10]
        text = text[: MAX_KEY_LENGTH - 11].rstrip("/") + "-" + digest
    return text


def _clip(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()


def _batches(items: list, size: int) -> Iterable[list]:
    return (items[start : start + size] for start in range(0, len(items), size))


class Tracker:
    """Guarded MLflow logging: every method returns normally, whatever the server does."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        enabled: bool = True,
        retries: int = 2,
        timeout_s: float = 10.0,
    ) -> None:
        self._uri = uri
        self.experiment = experiment
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.ok = True
        self.failures: list[str] = []
        self._down = False
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None
        if enabled:
            configure_http(retries, timeout_s)
            client = self._call("connect", self._connect, fatal=True)
            self._client = None if client is _FAILED else client

    @property
    def uri(self) -> str:
        return self._uri

    # -- guarded calls

    def _connect(self) -> MlflowClient:
        db = _sqlite_path(self._uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            repair_sqlite_store(db)  # a half-created file (kill -9) would break it for good
        return MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)

    def _fail(self, op: str, reason: str, down: bool = False) -> None:
        self.ok = False
        message = f"MLflow {op} failed: {reason}"
        if down and not self._down:
            self._down = True
            message += f"; tracking at {redact_uri(self._uri)} is off for the rest of this run"
        self.failures.append(message)
        log.warning(message)

    def _call(
        self, op: str, fn: Callable[..., Any], *args: Any, fatal: bool = False, **kwargs: Any
    ) -> Any:
        """``fn(*args, **kwargs)``, or ``_FAILED`` if it raised (recorded) or tracking is off."""
        if self._down or not self.enabled:
            return _FAILED
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill work
            reason, down = describe(exc)
            self._fail(op, reason, down or fatal)
        return _FAILED

    def _usable(self, run_id: str | None) -> bool:
        return run_id is not None and self._client is not None and not self._down

    # -- experiment and runs

    def _get_or_create_experiment(self) -> str:
        client = self._client
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            db = _sqlite_path(self._uri)  # keep local artifacts next to the db, not in cwd
            location = (db.parent / "mlartifacts").as_uri() if db is not None else None
            try:
                return client.create_experiment(
                    self.experiment,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: TRAINING},
                )
            except MlflowException as exc:  # created concurrently by another process
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage == "active":
            if EXPERIMENT_KIND_TAG not in (found.tags or {}):  # the UI opens on training runs
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING)
        if found is None or found.lifecycle_stage != "active":
            self._fail(
                "experiment",
                f"'{self.experiment}' is deleted; restore it (mlflow "
                "experiments restore) or set tracking.experiment",
                down=True,
            )
            return _FAILED
        return found.experiment_id

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (created on first use), or None when tracking is off."""
        if self._experiment_id is None and self._client is not None:
            found = self._call("experiment", self._get_or_create_experiment, fatal=True)
            self._experiment_id = None if found is _FAILED else str(found)
        return self._experiment_id

    def finished_run(self, run_id: str) -> bool:
        """Whether ``run_id`` is a finished, not deleted run of this store (no failure is
        recorded when it is not: a missing run is an answer, not an outage)."""
        if self._client is None or self._down:
            return False
        try:
            run = self._client.get_run(run_id)
        except Exception:  # noqa: BLE001 - unknown id, deleted store, server down: not there
            return False
        return run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"

    def start_run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        start_time: float | None = None,
    ) -> str | None:
        """Create a run (a child of ``parent_id`` if given) that started at ``start_time``
        (Unix seconds; default now); its id, or None if tracking is off."""
        experiment_id = self.experiment_id
        if experiment_id is None or self._client is None:
            return None
        run_tags = {clean_key(k): _clip(v, MAX_TAG_LENGTH) for k, v in (tags or {}).items()}
        if parent_id is not None:
            run_tags[PARENT_TAG] = parent_id
        start_ms = None if start_time is None else int(start_time * 1000)
        run = self._call(
            "start_run",
            self._client.create_run,
            experiment_id,
            start_time=start_ms,
            run_name=name,
            tags=run_tags,
        )
        if run is _FAILED:
            return None
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end_run(
        self, run_id: str | None, status: str = "FINISHED", end_time: float | None = None
    ) -> None:
        """Mark the run FINISHED, FAILED or KILLED (at ``end_time``, Unix seconds; default now)."""
        if not self._usable(run_id):
            return
        if status.upper() not in RUN_STATUSES:
            self._fail("end_run", f"status '{status}' is not one of {', '.join(RUN_STATUSES)}")
            status = "FAILED"
        end_ms = None if end_time is None else int(end_time * 1000)
        self._call("end_run", self._client.set_terminated, run_id, status.upper(), end_ms)

    # -- params, tags, metrics

    def _log_pairs(self, op: str, run_id: str | None, pairs: Mapping[str, Any]) -> None:
        if not self._usable(run_id):
            return
        kind, cls, limit = (
            ("params", Param, MAX_PARAM_LENGTH)
            if op == "log_params"
            else ("tags", RunTag, MAX_TAG_LENGTH)
        )
        cleaned = {clean_key(k): _clip(v, limit) for k, v in pairs.items()}  # last key wins
        for batch in _batches([cls(k, v) for k, v in cleaned.items()], PARAMS_PER_BATCH):
            self._call(op, self._client.log_batch, run_id, **{kind: batch})

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        """Log params (keys cleaned, values cut to MLflow's 6000 characters)."""
        self._log_pairs("log_params", run_id, params)

    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        """Set tags (keys cleaned, values cut to MLflow's 8000 characters)."""
        self._log_pairs("set_tags", run_id, tags)

    def _log_points(
        self, op: str, run_id: str | None, points: Iterable[tuple[str, Any, Any]]
    ) -> None:
        """Log (key, value, step) points in batch calls; a non-number fails the whole call."""
        if not self._usable(run_id):
            return
        now = int(time.time() * 1000)
        try:
            items = [Metric(clean_key(k), float(v), now, int(s)) for k, v, s in points]
        except (TypeError, ValueError):
            self._fail(op, "a value or step is not a number")
            return
        for batch in _batches(items, METRICS_PER_BATCH):
            if self._call(op, self._client.log_batch, run_id, metrics=batch) is _FAILED:
                return

    def log_metrics(
        self, run_id: str | None, metrics: Mapping[str, float], step: int | None = None
    ) -> None:
        """Log scalar metrics at one step (NaN is allowed)."""
        self._log_points("log_metrics", run_id, ((k, v, step or 0) for k, v in metrics.items()))

    def log_metric_steps(
        self, run_id: str | None, key: str, values: Sequence[float], steps: Sequence[int]
    ) -> None:
        """Log a whole curve in one batch call, e.g. layer F1 by node depth or per-epoch loss."""
        if len(values) != len(steps):
            if self._usable(run_id):
                self._fail("log_metric_steps", f"{len(values)} values for {len(steps)} steps")
            return
        points = ((key, v, s) for v, s in zip(values, steps, strict=True))
        self._log_points("log_metric_steps", run_id, points)

    # -- artifacts and registry

    def _upload(
        self,
        op: str,
        run_id: str | None,
        local: str | Path,
        artifact_path: str | None,
        is_dir: bool,
    ) -> None:
        if not self._usable(run_id):
            return
        if not (Path(local).is_dir() if is_dir else Path(local).is_file()):
            self._fail(op, f"the local {'directory' if is_dir else 'file'} does not exist")
            return
        self._call(op, getattr(self._client, op), run_id, str(local), artifact_path)

    def log_artifact(
        self, run_id: str | None, path: str | Path, artifact_path: str | None = None
    ) -> None:
        """Upload one local file into the run's artifacts (under ``artifact_path``)."""
        self._upload("log_artifact", run_id, path, artifact_path, is_dir=False)

    def log_artifacts(
        self, run_id: str | None, directory: str | Path, artifact_path: str | None = None
    ) -> None:
        """Upload a local directory tree into the run's artifacts (under ``artifact_path``)."""
        self._upload("log_artifacts", run_id, directory, artifact_path, is_dir=True)

    def _register(self, run_id: str, artifact_path: str, name: str, alias: str) -> str:
        client = self._client
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        root = client.get_run(run_id).info.artifact_uri.rstrip("/")
        version = client.create_model_version(
            name,
            f"{root}/{artifact_path.strip('/')}",
            run_id=run_id,
            await_creation_for=max(1, math.ceil(self.timeout_s)),
        )
        client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def log_table(self, run_id: str | None, table: Mapping[str, list], artifact_file: str) -> None:
        """A table the MLflow UI shows as one (``MlflowClient.log_table``)."""
        if self._usable(run_id):
            self._call("log_table", self._client.log_table, run_id, dict(table), artifact_file)

    def set_experiment_tag(self, key: str, value: str) -> None:
        """Tag the experiment (e.g. the UI's shared comparison view)."""
        experiment = self.experiment_id
        if experiment is not None and not self._down:
            self._call("experiment_tag", self._client.set_experiment_tag, experiment, key, value)

    def tag_model_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        if self._client is None:
            return
        for key, value in tags.items():
            self._call(
                "tag_model_version", self._client.set_model_version_tag, name, version, key, value
            )

    def register_model(
        self, run_id: str | None, artifact_path: str, name: str, alias: str = "champion"
    ) -> str | None:
        """Register the run's ``artifact_path`` directory as a new version of model ``name``
        (created if needed) and point ``alias`` at it; the version, or None on failure."""
        if not self._usable(run_id):
            return None
        version = self._call("register_model", self._register, run_id, artifact_path, name, alias)
        return None if version is _FAILED else version
