"""``cad score --executor ray``: Ray Data decoding and model actors on a local Ray cluster
(loopback, started and stopped here) write exactly the bytes of a local run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from score_helpers import SECRET

from cad.errors import CadError
from cad.scoring.api import score_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    # loopback only; the Ray workers import this checkout of cad
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "PYTHONPATH")}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'cad[ray]'")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        yield cluster.address
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_ray_scoring_writes_the_local_runs_bytes(
    ray_cluster, export, package, baseline, tmp_path, monkeypatch
):
    monkeypatch.setenv("CAD_SECRET", SECRET)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    out, keys = tmp_path / "p.csv", tmp_path / "keys.csv"
    summary = score_folder(
        package, export.root, out, key_map=keys, executor="ray", **baseline.options
    )
    assert out.read_bytes() == baseline.out.read_bytes()
    errors = baseline.out.with_name("p.errors.csv")
    assert (tmp_path / "p.errors.csv").read_bytes() == errors.read_bytes()
    assert keys.read_bytes() == baseline.key_map.read_bytes()
    for field in ("files", "studies", "studies_scored", "slices", "skipped", "errors"):
        assert getattr(summary, field) == getattr(baseline.summary, field), field
    assert summary.slices > baseline.options["batch_size"]  # batches crossed studies


def test_options_ray_cannot_honour_are_refused(export, package, tmp_path):
    with pytest.raises(CadError, match="--cam is not available with --executor ray"):
        score_folder(package, export.root, tmp_path / "p.csv", cam_dir=tmp_path / "cam",
                     executor="ray")  # fmt: skip
    with pytest.raises(CadError, match="--executor"):
        score_folder(package, export.root, tmp_path / "p.csv", executor="spark")
