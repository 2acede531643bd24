"""The team tracking server (deploy/team-tracking.sh): PostgreSQL + mlflow server + basic auth.

A real PostgreSQL cluster and a real ``mlflow server --app-name basic-auth`` on loopback
ports; a tiny pipeline logs to it with credentials from the environment, runs are read back,
wrong credentials fail with a clear message, and no password appears anywhere cad wrote.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cad.api import run_pipeline
from cad.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "team-tracking.sh"
HAVE_PG = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
pytestmark = pytest.mark.skipif(
    not HAVE_PG or shutil.which("curl") is None,
    reason="PostgreSQL (Debian: apt-get install postgresql) and curl are needed",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def team_server() -> Iterator[dict[str, str]]:
    # not under pytest's 0700 tmp root: as root, the cluster runs as the postgres user
    home = Path(tempfile.mkdtemp(prefix="cad-team-"))
    os.chmod(home, 0o755)
    env = {
        **os.environ,
        "CAD_TEAM_HOME": str(home),
        "CAD_TEAM_PORT": str(_free_port()),
        "CAD_TEAM_PG_PORT": str(_free_port()),
        "CAD_TEAM_MLFLOW": str(Path(sys.executable).with_name("mlflow")),
    }
    run = lambda *args, **kw: subprocess.run(  # noqa: E731
        ["bash", str(SCRIPT), *args], env=env, check=True, capture_output=True, text=True, **kw
    )
    run("init")
    try:
        run("start")
        run("add-user", "alice", input="alice-password-123\n")
        yield {"uri": f"http://127.0.0.1:{env['CAD_TEAM_PORT']}", "home": str(home)}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _all_text(folder: Path) -> str:
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in {".npy", ".safetensors", ".png", ".dcm"}:
            out.append(path.read_bytes().decode("latin-1"))
    return "\n".join(out)


def test_a_pipeline_logs_to_the_team_server_and_keeps_passwords_out(
    team_server, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-password-123")
    cfg = load_config(ROOT / "pipelines/smoke.yaml")
    result = run_pipeline(cfg, tmp_path / "run")
    tracking = result.summary.tracking
    assert tracking.ok, tracking.failures
    client = MlflowClient(team_server["uri"])
    parent = client.get_run(tracking.parent_run_id)
    assert parent.data.params["finetune.epochs"] == "1"
    child = client.get_run(result.summary.results[0].mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert "model" in artifacts  # proxied artifact store: uploaded through the server
    stored = Path(team_server["home"]) / "artifacts"
    assert any(stored.rglob("model.safetensors"))
    secrets = [
        "alice-password-123",
        (Path(team_server["home"]) / "secrets" / "admin_password").read_text().strip(),
        (Path(team_server["home"]) / "secrets" / "db_password").read_text().strip(),
    ]
    written = _all_text(tmp_path / "run") + capfd.readouterr().err
    assert not [s for s in secrets if s in written]
    logs = _all_text(Path(team_server["home"]) / "logs")
    assert not [s for s in secrets if s in logs]


def test_wrong_credentials_fail_clearly_and_the_run_still_finishes(
    team_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-her-password")
    result = run_pipeline(load_config(ROOT / "pipelines/smoke.yaml"), tmp_path / "run")
    tracking = result.summary.tracking
    assert not tracking.ok
    assert any("refused the credentials" in f for f in tracking.failures), tracking.failures
    assert "not-her-password" not in (tmp_path / "run" / "summary.json").read_text()
    assert (tmp_path / "run" / "report.md").is_file()  # tracking never kills work


def test_credentials_in_the_config_are_refused():
    from cad.errors import ConfigError

    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME"):
        load_config(ROOT / "pipelines/smoke.yaml", ["tracking.uri=http://bob:pw@host:5000"])
