"""Data-parallel fine-tuning (cad.distributed): two real gloo ranks on loopback, holding
unequal rows in every collective, against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cad.distributed import World

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_rank_holds_its_contiguous_part_like_array_split(size):
    for n in range(8):
        parts = [World(rank, size).bounds(n) for rank in range(size)]
        expected = np.array_split(np.arange(n), size)
        assert [list(range(lo, hi)) for lo, hi in parts] == [list(e) for e in expected]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _two_ranks(out: Path, network: str) -> list[subprocess.Popen]:
    port = str(_free_port())
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), network],
            env=_env(
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]


def _finish(ranks: list[subprocess.Popen]) -> None:
    for proc in ranks:  # a hang in a collective would never return here
        out = proc.communicate(timeout=900)[0].decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    ranks = _two_ranks(two, "lenet5")
    alone = subprocess.run(
        [sys.executable, str(WORKER), str(one)], env=_env(), capture_output=True, text=True
    )
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-3000:]
    _finish(ranks)
    return one, two


def _seen(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def test_unequal_parts_gather_in_rank_order_and_do_not_hang(runs):
    _, two = runs
    for rank in (0, 1):
        seen = _seen(two, rank)
        assert seen["ranks"] == 2
        assert seen["gathered"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]  # rank 1 held no rows
        assert len(seen["history"]) == 3  # every epoch validated on both ranks


def test_both_ranks_end_with_identical_weights_and_only_rank_0_publishes(runs):
    _, two = runs
    zero, one = _seen(two, 0), _seen(two, 1)
    assert zero["weights_sha256"] == one["weights_sha256"] is not None
    assert zero["history"] == one["history"]  # the same losses and stopping decisions
    assert zero["has_val_prob"] and not one["has_val_prob"]
    assert sorted(p.name for p in two.iterdir()) == [
        "initial.safetensors",
        "rank0.json",
        "rank1.json",
        "state.safetensors",
    ]


def test_two_ranks_match_one_process_within_the_stated_tolerance(runs):
    """fp32, no dropout, no trainable BatchNorm, weighted loss with a resampled duplicate:
    the global batch's step is reproduced up to float summation order."""
    one, two = runs
    alone, ranks = _seen(one, 0), _seen(two, 0)
    assert alone["ranks"] == 1 and alone["weights_sha256"] is None
    for a, b in zip(alone["history"], ranks["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["val_f1"] == a["val_f1"]
    single = load_file(str(one / "state.safetensors"))
    parallel = load_file(str(two / "state.safetensors"))
    initial = load_file(str(two / "initial.safetensors"))
    assert single.keys() == parallel.keys() == initial.keys()
    frozen = set(ranks["frozen"])
    assert frozen and frozen == set(alone["frozen"])
    for name, value in single.items():
        torch.testing.assert_close(parallel[name], value, rtol=0, atol=1e-5, msg=name)
        if name in frozen:  # bit-identical to before training, on both
            assert torch.equal(parallel[name], initial[name]), name
    trainable = [n for n in initial if n not in frozen and n.endswith("weight")]
    assert all(not torch.equal(parallel[n], initial[n]) for n in trainable)  # it did train


def test_trainable_batchnorm_on_cpu_ranks_trains_to_identical_parameters(tmp_path):
    """gloo has no SyncBatchNorm: each rank normalises its own part of the batch (not a
    one-process equality, README), but the ranks' parameters stay identical."""
    _finish(_two_ranks(tmp_path, "batchnorm"))
    zero, one = _seen(tmp_path, 0), _seen(tmp_path, 1)
    assert zero["weights_sha256"] == one["weights_sha256"] is not None
    assert len(zero["history"]) == 3 and zero["history"] == one["history"]


def test_gpu_ranks_get_syncbatchnorm_sharing_the_models_parameters_and_buffers():
    """The NCCL path's conversion, checked on the CPU (no GPU here: not run on one)."""
    import torchvision

    from cad.device import Runtime
    from cad.finetune.model import build_transfer_model, split_prefix
    from cad.finetune.train import _CachedStep, sync_batchnorm

    torch.manual_seed(0)
    model = build_transfer_model(
        torchvision.models.resnet18(), "layer1", "layer2", mean=(0.5,), std=(0.5,),
        in_chans=3, size=32, hidden=8, dropout=0.0,
    )  # fmt: skip
    halves = split_prefix(model.body)
    assert halves is not None
    step = _CachedStep(halves[1], model.head)
    cpu = Runtime(torch.device("cpu"), None, False)
    assert sync_batchnorm(step, cpu) is step  # gloo: plain BatchNorm
    converted = sync_batchnorm(step, Runtime(torch.device("cuda"), None, False))
    synced = [m for m in converted.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert synced and not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for p in converted.parameters())  # the optimizer's tensors
    buffers = {b.data_ptr() for b in model.buffers()}
    assert all(m.running_mean.data_ptr() in buffers for m in synced)  # statistics shared
    converted.eval()
    assert not any(m.training for m in synced)  # validation never synchronises
