"""Heap reuse: a forward pass's large activations come back without page faults.

Each case runs in a fresh interpreter: the heap of a long-lived test process already holds
large free blocks from earlier tests, which hides what glibc does by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cad import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc only")

PAGES = 4 * 64 * 256 * 256 * 4 // 4096  # pages of the conv output below (67 MB, fp32)

SCRIPT = """
import json, resource, sys
import torch
from torch import nn
from cad import heap
from cad.device import select_runtime

def faults_per_forward():
    # third forward of a conv whose output is above glibc's largest mmap threshold (the
    # first two may grow the heap)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(4, 3, 256, 256)
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"default": faults_per_forward()}
torch.cuda.is_available = lambda: False
select_runtime("auto")  # a library call: never tunes the process
out["after_select_runtime"] = faults_per_forward()
from cad.cli.app import tune_process
tune_process()  # what `cad run` and `cad score` do at their entry points
out["after_entry_point"] = faults_per_forward()
out["tuned"] = heap._state["tuned"]
print(json.dumps(out))
"""


def run(env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cpu_runtime_makes_activations_reusable_without_page_faults() -> None:
    out = run({"CAD_HEAP_TUNING": "1"})
    assert out["default"] > PAGES // 2  # glibc maps and zero-fills them on every forward
    assert out["after_select_runtime"] > PAGES // 2  # importing/using cad changes nothing
    assert out["tuned"] and out["after_entry_point"] < PAGES // 20


def test_the_opt_out_leaves_the_c_library_alone() -> None:
    out = run({"CAD_HEAP_TUNING": "0"})
    assert not out["tuned"] and out["after_entry_point"] > PAGES // 2
