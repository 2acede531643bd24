"""``torchrun --nproc_per_node 2 -m cad run`` (gloo, CPU, loopback) against one process on
the tiny pipeline: one package published once by rank 0, no MLflow run or log line from
rank 1, frozen bits unchanged, and the result within the README's stated tolerance."""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "backbones=[{name: lenet5, weights: random}]",  # no BatchNorm in the trainable part
    "finetune.dropout=0",
    "finetune.precision=fp32",
    "finetune.epochs=3",
    "finetune.patience=3",
]
ENV = {"CAD_SECRET": "d" * 64, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(launcher: list[str], workdir: Path) -> str:
    args = [*launcher, "run", str(ROOT / "pipelines/smoke.yaml"), "--workdir", str(workdir)]
    for item in TINY:
        args += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run(args, env={**env, **ENV}, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _mlflow_runs(workdir: Path) -> int:
    with sqlite3.connect(workdir / "mlflow.db") as db:
        return int(db.execute("select count(*) from runs").fetchone()[0])


def _finetune(workdir: Path) -> dict[str, Path]:
    """Fine-tuning artifacts by their number of data-parallel ranks."""
    found = {}
    for folder in (workdir / "artifacts").glob("finetune-*"):
        meta = json.loads((folder / "manifest.json").read_text())
        found[meta.get("data_parallel", {}).get("ranks", 1)] = folder
    return found


def _history(folder: Path) -> list[dict[str, float]]:
    with (folder / "history.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, int, int, str]:
    """One process first, then two ranks in the same workdir (they reuse its data stages)."""
    workdir = tmp_path_factory.mktemp("torchrun")
    _run([sys.executable, "-m", "cad"], workdir)
    after_one = _mlflow_runs(workdir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    torchrun += ["--nproc_per_node", "2", "--master-addr", "127.0.0.1"]
    torchrun += ["--master-port", str(_free_port()), "-m", "cad"]
    out = _run(torchrun, workdir)
    return workdir, after_one, _mlflow_runs(workdir), out


def test_rank_0_publishes_one_package_and_rank_1_writes_nothing(workdir):
    folder, after_one, after_two, out = workdir
    assert "rank 1: fine-tuning lenet5 r1" in out  # rank 1 trained beside rank 0
    found = _finetune(folder)
    assert sorted(found) == [1, 2]  # exactly one data-parallel package, beside the single one
    meta = json.loads((found[2] / "manifest.json").read_text())
    assert meta["config"]["data_parallel"] == 2  # its own key: it rounds differently
    assert len(meta["data_parallel"]["weights_sha256"]) == 64  # checked equal on both ranks
    assert not list((folder / "artifacts").glob(".tmp-*"))
    assert after_two - after_one == after_one > 0  # rank 0's runs only, as many as one process
    log = (folder / "logs" / "run.log").read_text()
    assert "data-parallel rank 0 of 2" in log and "rank 1" not in log


def test_two_ranks_match_one_process_and_frozen_bits_are_unchanged(workdir):
    from cad.artifacts.model_package import read_meta
    from cad.finetune.package import rebuild
    from cad.pipeline.stages.layers import BACKBONE_SEED

    found = _finetune(workdir[0])
    for one, two in zip(_history(found[1]), _history(found[2]), strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
        assert two["val_f1"] == one["val_f1"]
    single = load_file(str(found[1] / "model" / "model.safetensors"))
    parallel = load_file(str(found[2] / "model" / "model.safetensors"))
    assert single.keys() == parallel.keys()
    for name, value in single.items():
        torch.testing.assert_close(parallel[name], value, rtol=0, atol=1e-5, msg=name)
    # the backbone as the chain built it (seeded), cut and frozen as the package says
    torch.manual_seed(BACKBONE_SEED)
    initial = rebuild(read_meta(found[2] / "model"))
    frozen = initial.frozen_parameters()
    assert frozen and all(n.startswith("body.") for n in frozen)
    for name, value in frozen.items():
        assert torch.equal(parallel[name], value), name  # bit-identical after two ranks
    trained = [n for n, p in initial.named_parameters() if p.requires_grad and "body." in n]
    assert trained and all(not torch.equal(parallel[n], initial.state_dict()[n]) for n in trained)
