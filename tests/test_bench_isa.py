"""``--isa avx2`` re-runs a benchmark in the emulated AVX2 class (nothing is timed)."""

from __future__ import annotations

import pytest

from benchmarks import _common


def test_isa_argument_reads_both_spellings() -> None:
    assert _common.isa_argument(["b.py", "--quick"]) == "native"
    assert _common.isa_argument(["b.py", "--isa", "avx2"]) == "avx2"
    assert _common.isa_argument(["b.py", "--isa=avx2", "--quick"]) == "avx2"


def test_avx2_re_executes_the_same_module_with_both_caps(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(_common.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    _common.reexec_for_isa(["/x/benchmarks/bench_extract.py", "--isa", "avx2", "--quick"])
    ((argv, env),) = calls
    assert argv[1:] == ["-m", "benchmarks.bench_extract", "--isa", "avx2", "--quick"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2"  # int8 kernels have their own cap


def test_no_second_exec_once_the_caps_are_set_and_none_for_native(monkeypatch) -> None:
    monkeypatch.setattr(_common.os, "execve", lambda *a: pytest.fail("exec'd again"))
    _common.reexec_for_isa(["b.py"])
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    _common.reexec_for_isa(["b.py", "--isa", "avx2"])


def test_an_unknown_class_is_refused() -> None:
    with pytest.raises(SystemExit, match="--isa avx9"):
        _common.reexec_for_isa(["b.py", "--isa", "avx9"])


def test_the_scoring_child_of_score_throughput_runs_under_the_same_caps(monkeypatch) -> None:
    """score_throughput times ``cad score`` in a child process: an --isa avx2 figure is
    only an AVX2 figure if that child inherits the caps the benchmark re-ran under."""
    from pathlib import Path

    from benchmarks import score_throughput

    seen = {}

    class Stop(Exception):
        pass

    def popen(command, **kwargs):
        seen.update(kwargs["env"])
        raise Stop

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setattr(score_throughput.subprocess, "Popen", popen)
    with pytest.raises(Stop):
        score_throughput.score_in_child(Path("p"), Path("r"), Path("o"), 2, 64, pss=False)
    assert seen["ATEN_CPU_CAPABILITY"] == "avx2" and seen["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert seen["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert seen["CAD_SECRET"].startswith("benchmark-")  # the secret, never on the command line
