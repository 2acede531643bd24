"""Backbone chains on a real local Ray cluster (two node processes, loopback): same artifact
keys and metrics as the local executor, and a worker killed mid-chain is retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray on Linux resolves 127.0.0.1 to the host's address; this keeps the test cluster (and the
# cad processes that join it, which inherit the variable) on loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'cad[ray]'")

ROOT = Path(__file__).resolve().parents[2]
TWO_BACKBONES = [
    "backbones=[{name: resnet18, weights: random}, {name: mobilenet_v3_small, weights: random}]",
    "finetune.epochs=3",
    "finetune.patience=3",
]
SECRET = {"CAD_SECRET": "e" * 64}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def _cad_run(workdir: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cad.cli", "run", str(ROOT / "pipelines/smoke.yaml")]
    args += ["--workdir", str(workdir), "--no-track", *extra]
    for item in TWO_BACKBONES:
        args += ["--set", item]
    env = {**os.environ, **SECRET, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _outcome(workdir: Path) -> tuple[list, list]:
    summary = json.loads((workdir / "summary.json").read_text())
    keys = sorted((s["label"], s["key"]) for s in summary["stages"])
    metrics = [
        (r["backbone"], r["nodes"], r["val_f1"], r["test"], r["test_patient"])
        for r in summary["results"]
    ]
    return keys, metrics


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    proc = _cad_run(workdir)
    out = proc.communicate(timeout=900)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    return workdir


def test_ray_executor_gives_the_local_keys_and_metrics(cluster, local_run, tmp_path):
    proc = _cad_run(tmp_path, "--executor", "ray", "--address", cluster)
    out = proc.communicate(timeout=900)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert _outcome(tmp_path) == _outcome(local_run)
    assert not (tmp_path / ".cad_secret").exists()  # the secret came from CAD_SECRET only


def _chain_worker(artifacts: Path, deadline: float) -> int | None:
    """The pid of a process writing a finetune artifact (the temp dir name carries it)."""
    while time.time() < deadline:
        for tmp in artifacts.glob(".tmp-finetune-*"):
            return int(tmp.name.split("-")[-2])
        time.sleep(0.02)
    return None


def test_a_worker_killed_mid_chain_is_retried_and_the_result_is_unchanged(
    cluster, local_run, tmp_path
):
    proc = _cad_run(tmp_path, "--executor", "ray", "--address", cluster)
    pid = _chain_worker(tmp_path / "artifacts", time.time() + 600)
    assert pid is not None and pid != proc.pid, "no chain stage ran in a Ray worker"
    os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=900)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert _outcome(tmp_path) == _outcome(local_run)
    assert not list((tmp_path / "artifacts").glob(".tmp-*"))  # the killed attempt's leftovers
