"""MLflow tracking: round trips on sqlite and on a real ``mlflow server``; outages never raise."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow_processes import free_port
from mlflow_processes import mlflow_server as serve

from cad.errors import ModelPackageError
from cad.tracking import (
    MAX_KEY_LENGTH,
    Tracker,
    clean_key,
    default_tracking_uri,
    redact_uri,
    resolve_model_uri,
)

MLFLOW_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_TRACKING_URI",
)


@pytest.fixture(autouse=True)
def _restore_mlflow_env() -> Iterator[None]:
    """Tracker sets MLflow's HTTP knobs process-wide; keep them from leaking into other tests."""
    saved = {name: os.environ.get(name) for name in MLFLOW_ENV}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class CountingClient:
    """Delegates to a real MlflowClient and records the name of every method called."""

    def __init__(self, inner: MlflowClient) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_seen() -> Iterator[list[str]]:
    handler = Warnings()
    logger = logging.getLogger("cad.tracking")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store per module (creating its schema is the slow part)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port; stopped even if the tests fail."""
    root = tmp_path_factory.mktemp("server")
    with serve(
        root, f"sqlite:///{root / 'srv.db'}", "--artifacts-destination", str(root / "art")
    ) as url:
        yield url


def _model_package(root: Path) -> Path:
    package = root / "package"
    (package / "weights").mkdir(parents=True)
    (package / "model.json").write_text('{"backbone": "resnet50", "threshold": 0.41}')
    (package / "weights" / "model.safetensors").write_bytes(bytes(range(256)))
    return package


def _round_trip(uri: str, work: Path, experiment: str, model_name: str) -> None:
    """Log a parent with two children, register a model, read it all back through MLflow."""
    package = _model_package(work)
    plot = work / "roc.png"
    plot.write_bytes(b"\x89PNG fake")
    tracker = Tracker(uri, experiment, retries=1, timeout_s=10)
    parent = tracker.start_run(
        "breast_mri",
        params={"split.seed": 0, "data.note": "x" * 7000, "odd key (1)": "v"},
        tags={"cad.version": "0.1.0"},
    )
    children = {
        name: tracker.start_run(name, parent_id=parent, params={"backbone": name})
        for name in ("resnet50", "vgg16")
    }
    child = children["resnet50"]
    tracker.log_metric_steps(child, "probe/layer_f1", [0.6, 0.8, 0.7], [4, 8, 16])
    tracker.log_metric_steps(child, "train/val_loss", [0.9, 0.5], [1, 2])
    tracker.log_metrics(child, {"test/f1": 0.8, "test/f1 (low)": float("nan")}, step=1)
    tracker.set_tags(child, {"node.finetune": "layer2"})
    tracker.log_artifacts(child, package, "model")
    tracker.log_artifact(child, plot, "plots")
    version = tracker.register_model(child, "model", model_name)
    for run_id in (*children.values(), parent):
        tracker.end_run(run_id)
    assert tracker.failures == [] and tracker.ok
    assert version == "1"

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {r.info.run_name: r for r in client.search_runs([tracker.experiment_id])}
    assert set(runs) == {"breast_mri", "resnet50", "vgg16"}
    assert runs["resnet50"].data.tags["mlflow.parentRunId"] == parent
    assert runs["vgg16"].data.tags["mlflow.parentRunId"] == parent
    assert "mlflow.parentRunId" not in runs["breast_mri"].data.tags
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

    history = client.get_metric_history(child, "probe/layer_f1")
    assert sorted((m.step, m.value) for m in history) == [(4, 0.6), (8, 0.8), (16, 0.7)]
    metrics = runs["resnet50"].data.metrics
    assert metrics["test/f1"] == 0.8 and math.isnan(metrics[clean_key("test/f1 (low)")])

    params = runs["breast_mri"].data.params
    assert len(params["data.note"]) == 6000 and params["data.note"].endswith("[truncated]")
    assert params[clean_key("odd key (1)")] == "v"
    assert runs["vgg16"].data.params["backbone"] == "vgg16"
    assert runs["resnet50"].data.tags["node.finetune"] == "layer2"
    assert runs["breast_mri"].data.tags["cad.version"] == "0.1.0"

    assert {f.path for f in client.list_artifacts(child, "model")} == {
        "model/model.json",
        "model/weights",
    }
    assert [f.path for f in client.list_artifacts(child, "plots")] == ["plots/roc.png"]
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "1"
    assert client.get_model_version(model_name, "1").run_id == child

    for model_uri in (
        f"runs:/{child}/model",
        f"models:/{model_name}@champion",
        f"models:/{model_name}/1",
    ):
        dest = work / "downloads" / re.sub(r"\W+", "_", model_uri)
        local = resolve_model_uri(model_uri, uri, dest)
        assert local.is_dir() and local.is_relative_to(dest), model_uri
        assert (local / "model.json").read_text() == (package / "model.json").read_text()
        assert (local / "weights" / "model.safetensors").read_bytes() == bytes(range(256))


def test_round_trip_on_sqlite(sqlite_uri: str, tmp_path: Path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _round_trip(sqlite_uri, tmp_path, "sqlite-round-trip", "cad-sqlite")
    assert list(cwd.iterdir()) == []  # no stray ./mlruns or ./mlflow.db from mlflow defaults
    store = Path(sqlite_uri.removeprefix("sqlite:///")).parent
    assert any((store / "mlartifacts").rglob("model.json"))  # artifacts next to the db


def test_round_trip_on_mlflow_server(mlflow_server: str, tmp_path: Path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _round_trip(mlflow_server, tmp_path, "server-round-trip", "cad-server")
    assert list(cwd.iterdir()) == []


def test_registering_again_moves_the_alias(sqlite_uri: str, tmp_path: Path):
    tracker = Tracker(sqlite_uri, "re-register")
    package = _model_package(tmp_path)
    versions = []
    for _ in range(2):
        run = tracker.start_run("child")
        tracker.log_artifacts(run, package, "model")
        versions.append(tracker.register_model(run, "model", "cad-twice", alias="best"))
    assert versions == ["1", "2"] and tracker.ok
    client = MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)
    assert str(client.get_model_version_by_alias("cad-twice", "best").version) == "2"


def test_unreachable_server_never_raises_and_is_called_once(tmp_path: Path, warnings_seen):
    tracker = Tracker(f"http://127.0.0.1:{free_port()}", "down", retries=0, timeout_s=1)
    counting = CountingClient(tracker._client)
    tracker._client = counting
    assert tracker.start_run("pipeline", params={"patient": "Jane Doe"}) is None
    assert counting.calls == ["get_experiment_by_name"]
    assert tracker.ok is False
    assert len(tracker.failures) == 1 and "connection failed" in tracker.failures[0]

    (tmp_path / "file.txt").write_text("x")
    assert tracker.start_run("child", parent_id="abc") is None
    tracker.log_params("abc", {"a": 1})
    tracker.set_tags("abc", {"a": 1})
    tracker.log_metrics("abc", {"f1": 0.5}, step=1)
    tracker.log_metric_steps("abc", "layer_f1", [0.5, 0.6], [1, 2])
    tracker.log_artifact("abc", tmp_path / "file.txt")
    tracker.log_artifacts("abc", tmp_path, "dir")
    assert tracker.register_model("abc", "model", "m") is None
    tracker.end_run("abc", "FAILED")
    assert tracker.experiment_id is None
    assert counting.calls == ["get_experiment_by_name"]  # no further wait per call
    assert len(tracker.failures) == 1 and len(warnings_seen) == 1
    assert "Jane" not in " ".join(tracker.failures + warnings_seen)


def test_outage_in_the_middle_turns_tracking_off(sqlite_uri: str):
    tracker = Tracker(sqlite_uri, "mid-run-outage", retries=0, timeout_s=1)
    run = tracker.start_run("child")
    assert run is not None
    dead = CountingClient(MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}"))
    tracker._client = dead
    tracker.log_metrics(run, {"a": 1.0})
    tracker.log_metric_steps(run, "b", [1.0], [0])
    tracker.end_run(run)
    assert dead.calls == ["log_batch"]
    assert not tracker.ok and len(tracker.failures) == 1


def test_a_rejected_request_is_recorded_but_tracking_goes_on(sqlite_uri: str):
    tracker = Tracker(sqlite_uri, "rejected")
    run = tracker.start_run("child", params={"data.root": "/data/Jane_Doe"})
    tracker.log_params(run, {"data.root": "/data/John_Roe"})  # MLflow refuses to change a param
    assert not tracker.ok and len(tracker.failures) == 1
    assert "INVALID_PARAMETER_VALUE" in tracker.failures[0]
    assert "Doe" not in tracker.failures[0] and "Roe" not in tracker.failures[0]
    tracker.log_metrics(run, {"f1": 0.5})
    tracker.log_artifact(run, "/nonexistent/file.txt")
    assert len(tracker.failures) == 2 and "does not exist" in tracker.failures[1]
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert client.get_run(run).data.metrics["f1"] == 0.5


def test_deleted_experiment_is_reported_with_the_fix(sqlite_uri: str):
    client = MlflowClient(tracking_uri=sqlite_uri)
    client.delete_experiment(client.create_experiment("gone"))
    tracker = Tracker(sqlite_uri, "gone")
    assert tracker.start_run("run") is None
    assert "deleted" in tracker.failures[0] and "restore" in tracker.failures[0]


def test_disabled_tracker_does_nothing(tmp_path: Path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'never.db'}", "off", enabled=False)
    assert tracker.start_run("run") is None and tracker.experiment_id is None
    tracker.log_metrics(None, {"a": 1})
    assert tracker.ok and tracker.failures == []
    assert not (tmp_path / "never.db").exists()


def test_http_knobs_are_bounded_from_the_config():
    Tracker(f"http://127.0.0.1:{free_port()}", "knobs", retries=3, timeout_s=2.5)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_clean_key_makes_valid_distinct_keys():
    assert clean_key("test/f1 (low)") == "test/f1 _low_"
    assert clean_key("/a//b/./c/") == "a/b/c"
    assert clean_key("../x") == "__/x"
    assert clean_key("") == "_"
    long_a, long_b = clean_key("k" * 300 + "a"), clean_key("k" * 300 + "b")
    assert len(long_a) == MAX_KEY_LENGTH and long_a != long_b


def test_default_tracking_uri_precedence(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path, None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri(tmp_path, None) == "http://tracking:5000"
    assert default_tracking_uri(tmp_path, "http://configured:5000") == "http://configured:5000"


def test_redact_uri_hides_credentials():
    assert redact_uri("https://user:secret@host:5000/x") == "https://***@host:5000/x"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_resolve_model_uri_errors_are_typed(sqlite_uri: str, tmp_path: Path):
    assert resolve_model_uri(str(tmp_path), sqlite_uri, tmp_path / "d") == tmp_path
    with pytest.raises(ModelPackageError, match="no model package directory"):
        resolve_model_uri(str(tmp_path / "missing"), sqlite_uri, tmp_path / "d")
    with pytest.raises(ModelPackageError, match="not a registered-model URI"):
        resolve_model_uri("models:/only-a-name", sqlite_uri, tmp_path / "d")
    with pytest.raises(ModelPackageError, match="not found"):
        resolve_model_uri("models:/no-such-model@champion", sqlite_uri, tmp_path / "d")
    closed = f"http://user:pw@127.0.0.1:{free_port()}"
    with pytest.raises(ModelPackageError, match="connection failed") as info:
        resolve_model_uri("runs:/abc/model", closed, tmp_path / "d", retries=0, timeout_s=1)
    assert "pw" not in str(info.value)
