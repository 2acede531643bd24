"""Heap reuse: a forward pass's large activations come back without page faults."""

from __future__ import annotations

import resource

import pytest
import torch
from torch import nn

from cad import heap
from cad.device import select_runtime

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc only")


def faults_per_forward() -> int:
    """Minor page faults of the third forward of a conv layer whose output (67 MB, fp32) is
    above glibc's largest mmap threshold (the first two may grow the heap)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(4, 3, 256, 256)
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


PAGES = 4 * 64 * 256 * 256 * 4 // 4096  # the output's pages


@pytest.fixture
def restored():
    yield
    heap.reuse_freed_memory()  # leave the process as cad leaves it


def test_activations_are_reused_without_page_faults(restored) -> None:
    heap.glibc_default_like()
    assert faults_per_forward() > PAGES // 2  # glibc maps and zero-fills them every time
    assert heap.reuse_freed_memory()
    assert faults_per_forward() < PAGES // 20


def test_selecting_a_cpu_runtime_sets_up_heap_reuse(monkeypatch, restored) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    heap.glibc_default_like()
    select_runtime("auto")
    assert heap._state["tuned"] and faults_per_forward() < PAGES // 20


def test_the_opt_out_leaves_the_c_library_alone(monkeypatch, restored) -> None:
    heap.glibc_default_like()
    monkeypatch.setenv("CAD_HEAP_TUNING", "0")
    assert not heap.reuse_freed_memory() and not heap._state["tuned"]
    assert faults_per_forward() > PAGES // 2
