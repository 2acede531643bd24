"""Shared helpers for the benchmarks: machine description, interleaved timing, the matmul
"hardware limit", phantom training data, and writing ``results/<name>.json``.

Every benchmark runs cad and the obvious alternative in one process, interleaved
(A, B, A, B, ...), so both see the same background load; it reports best and median.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def cpu_model() -> str:
    from cad.cpu import cpu_info

    return cpu_info().model


def machine_info() -> dict[str, Any]:
    """CPU model, cores, ISA features that matter here, library versions, date, load."""
    import sklearn
    import torch
    import torchvision

    from cad.cpu import cpu_info

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": cpu_info().bf16,
        "amx": cpu_info().amx,
        "cpu": cpu_info().as_dict(),  # what torch dispatches to: the CPU class of every figure
        "cpu_class": cpu_info().cpu_class,
        "cpu_label": cpu_info().label,  # says "emulated" for an --isa run
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "sklearn": sklearn.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }


def under_load(load: Sequence[float], cores: int | None = None) -> bool:
    """True when other work competed for the CPUs (1-min load above ~half the cores)."""
    return load[0] > 0.5 * (cores or os.cpu_count() or 1)


def write_result(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


@dataclass
class Timings:
    """Wall seconds per repetition of one side of a comparison, and the CPU seconds this
    process (all its threads, not child processes) spent in it.

    Under background load the CPU time is the steadier measure of how much work a side
    does, provided idle OpenMP threads sleep (``--omp-passive``); with libgomp's default
    spinning it counts the spinning too.
    """

    seconds: list[float]
    cpu: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_best(self) -> float:
        return min(self.cpu)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def as_dict(self) -> dict[str, Any]:
        return {
            "best_s": self.best,
            "median_s": self.median,
            "all_s": self.seconds,
            "cpu_best_s": self.cpu_best,
            "cpu_median_s": self.cpu_median,
            "cpu_all_s": self.cpu,
        }


def interleave(
    sides: dict[str, Callable[[], Any]], reps: int, between: Callable[[], None] | None = None
) -> tuple[dict[str, Timings], dict[str, Any]]:
    """Run every side once per round, ``reps`` rounds (A, B, A, B, ...).

    Returns the timings and each side's output from the last round. ``between`` runs
    (untimed) at the start of every round, e.g. to re-measure the matmul limit.
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    for _ in range(reps):
        if between is not None:
            between()
        for name, fn in sides.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return {name: Timings(t, cpu[name]) for name, t in times.items()}, outputs


class MatmulLimit:
    """The machine's own dense throughput (GFLOP/s) in fp32 and bf16: the best seen of a
    large square ``torch.mm`` and of a large 3x3 convolution (channels_last, inference).

    That is the most efficient thing the CPU does with these numbers, the practical
    ceiling for CNN layers (oneDNN lowers convolutions to GEMM-like kernels; in fp32 its
    convolutions beat MKL's sgemm, hence both). Call ``measure`` between rounds so that the
    ceiling sees the same background load as the workloads.
    """

    def __init__(
        self, n: int = 2048, tries: int = 3, native_only: bool = True, int8: bool = False
    ) -> None:
        from cad.cpu import cpu_info

        self.n, self.tries = n, tries
        # bf16 on a CPU without AVX-512 BF16/AMX is emulated (about 20 GFLOP/s): measuring it
        # between rounds costs minutes and no side runs in it, so only native precisions
        self.labels = ("fp32", "bf16") if cpu_info().bf16 or not native_only else ("fp32",)
        # int8 (cad.quantize, for sides that run it): the same 3x3 convolution quantized,
        # 2 "FLOPs" per int8 multiply-add; torch has no public int8 GEMM to time beside it
        self.labels += ("int8",) if int8 else ()
        self.samples: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
        self.cpu_samples: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
        self.parts: dict[str, list[float]] = {
            "mm_fp32": [],
            "mm_bf16": [],
            "conv_fp32": [],
            "conv_bf16": [],
            "conv_int8": [],
        }

    def _best(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """Best wall seconds and best CPU seconds of ``tries`` calls."""
        fn()  # warm-up: thread pool, kernel selection, weight reorders
        best, cpu_best = float("inf"), float("inf")
        for _ in range(self.tries):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - start)
            cpu_best = min(cpu_best, time.process_time() - cpu_start)
        return best, max(cpu_best, 1e-9)

    def measure(self) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        if "int8" in self.labels:
            self._measure_int8(gen)
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if label not in self.labels:
                continue
            a = torch.randn(self.n, self.n, generator=gen).to(dtype)
            b = torch.randn(self.n, self.n, generator=gen).to(dtype)
            mm_flops = 2 * self.n**3
            mm_wall, mm_cpu = self._best(lambda a=a, b=b: torch.mm(a, b))
            conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
            conv = conv.to(dtype).to(memory_format=torch.channels_last)
            x = torch.randn(32, 256, 24, 24, generator=gen).to(dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                flops = 2 * 32 * 24 * 24 * 256 * 256 * 9
                cv_wall, cv_cpu = self._best(lambda conv=conv, x=x: conv(x))
            mm, cv = mm_flops / mm_wall / 1e9, flops / cv_wall / 1e9
            self.parts[f"mm_{label}"].append(mm)
            self.parts[f"conv_{label}"].append(cv)
            self.samples[label].append(max(mm, cv))
            self.cpu_samples[label].append(max(mm_flops / mm_cpu, flops / cv_cpu) / 1e9)

    def _measure_int8(self, gen: Any) -> None:
        import torch

        from cad.quantize import quantize_int8

        conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
        x = torch.randn(32, 256, 24, 24, generator=gen).contiguous(
            memory_format=torch.channels_last
        )
        quantized = quantize_int8(conv.to(memory_format=torch.channels_last), [x])
        flops = 2 * 32 * 24 * 24 * 256 * 256 * 9
        with torch.inference_mode():
            wall, cpu = self._best(lambda: quantized(x))
        self.parts["conv_int8"].append(flops / wall / 1e9)
        self.samples["int8"].append(flops / wall / 1e9)
        self.cpu_samples["int8"].append(flops / cpu / 1e9)

    def best(self, label: str) -> float:
        label = label if label in self.labels else "fp32"
        if not self.samples[label]:
            self.measure()
        return max(self.samples[label])

    def best_per_cpu_s(self, label: str) -> float:
        """GFLOP per CPU-second (per core busy): the ceiling for CPU-time throughput."""
        label = label if label in self.labels else "fp32"
        if not self.cpu_samples[label]:
            self.measure()
        return max(self.cpu_samples[label])

    def as_dict(self) -> dict[str, Any]:
        return {
            "mm_n": self.n,
            **{f"{k}_gflops_best": max(v) for k, v in self.samples.items() if v},
            **{f"{k}_gflop_per_cpu_s_best": max(v) for k, v in self.cpu_samples.items() if v},
            **{f"{k}_gflops_best": max(v) for k, v in self.parts.items() if v},
            **{f"{k}_gflops_all": v for k, v in self.parts.items()},
        }


@dataclass
class PhantomTrainingSet:
    """The training split after the data stages: what ``extract``/``probe`` see."""

    images: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    folds: np.ndarray  # (N,) patient fold of each sample
    order: np.ndarray  # resampled training order (what fine-tuning iterates)
    val_images: np.ndarray
    val_labels: np.ndarray
    config: Any  # the PipelineConfig used
    key: str  # the augment artifact's content key: names caches derived from these data


def phantom_training_set(
    pipeline: str | Path, overrides: Sequence[str], workdir: Path
) -> PhantomTrainingSet:
    """Run only the data stages (phantom -> manifest -> ingest -> split -> augment) of
    ``pipeline`` with ``--set``-style ``overrides`` in ``workdir`` and load the training
    split the way the probe and finetune stages do. Finished stages are reused."""
    from cad.artifacts.images import ImageSet, TrainingSet
    from cad.artifacts.splits import Splits
    from cad.artifacts.summary import RunDir
    from cad.config import load_config
    from cad.data.samples import column
    from cad.phi import Pseudonymizer, load_secret
    from cad.pipeline.graph import build_graph
    from cad.pipeline.runner import Runner

    cfg = load_config(pipeline, list(overrides))
    workdir.mkdir(parents=True, exist_ok=True)
    secret = load_secret(workdir)
    graph = build_graph(cfg, Pseudonymizer(secret).key("secret", "fingerprint"))
    assert graph.data is not None
    runner = Runner(RunDir(workdir), secret)
    augment = TrainingSet.view(runner.run_node(graph.data.augment))
    split = Splits.view(runner.results[graph.data.split])
    images = ImageSet.view(runner.results[graph.data.images])
    samples = augment.samples()
    assignment = split.assignment()
    val_images, val_samples = images.subset(assignment.val)
    return PhantomTrainingSet(
        images=np.ascontiguousarray(augment.images(), dtype=np.float32),
        labels=augment.labels(),
        folds=assignment.sample_folds(samples),
        order=augment.order(),
        val_images=np.ascontiguousarray(val_images, dtype=np.float32),
        val_labels=column(val_samples, "label").astype(np.int64),
        config=cfg,
        key=augment.key,
    )


def pipeline_input_size(pipeline: str | Path = ROOT / "pipelines" / "breast_mri.yaml") -> int:
    """The input size the main pipeline uses (``input.size``), the benchmarks' default."""
    from cad.config import load_config

    return load_config(pipeline).input.size


def cache_dir(name: str) -> Path:
    """A reusable scratch directory (phantom data survive between benchmark runs)."""
    base = Path(os.environ.get("CAD_BENCH_CACHE", Path.home() / ".cache" / "cad-bench"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def isa_argument(argv: Sequence[str]) -> str:
    """The value of ``--isa X`` / ``--isa=X`` in ``argv`` (``native`` when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--isa" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--isa="):
            return arg.split("=", 1)[1]
    return "native"


def reexec_for_isa(argv: Sequence[str]) -> None:
    """``--isa avx2``: run this benchmark again (same module, same arguments) with the
    environment that caps torch's dispatch and oneDNN's kernels to AVX2
    (``cad.cpu.EMULATION_ENV``), unless that environment is already in place. Both are
    read when the libraries load, hence a new process rather than a setting."""
    isa = isa_argument(argv)
    if isa == "native":
        return
    from cad.cpu import EMULATION_ENV

    if isa not in EMULATION_ENV:
        raise SystemExit(f"--isa {isa}: choose native or one of {sorted(EMULATION_ENV)}")
    env = EMULATION_ENV[isa]
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    module = f"benchmarks.{Path(argv[0]).stem}"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    print(f"--isa {isa}: re-running with {' '.join(f'{k}={v}' for k, v in env.items())}")
    sys.stdout.flush()
    os.execve(
        sys.executable,
        [sys.executable, "-m", module, *argv[1:]],
        {**os.environ, **env, "PYTHONPATH": path},
    )


def cpu_banner() -> str:
    """One line naming the CPU class every figure of this run belongs to."""
    from cad.cpu import cpu_info
    from cad.device import resolved_precision

    info = cpu_info()
    return (
        f"CPU class: {info.label}; {info.cores} cores, bf16 {'native' if info.bf16 else 'no'}, "
        f"VNNI {'yes' if info.vnni else 'no'}; precision auto -> {resolved_precision('auto')}"
    )


def native_precisions() -> tuple[str, ...]:
    """The precisions this CPU runs natively: bf16 only with AVX-512 BF16 or AMX (elsewhere
    it is emulated at a tenth of fp32's speed, so a bf16 side is skipped, not timed)."""
    from cad.cpu import cpu_info

    return ("fp32", "bf16") if cpu_info().bf16 else ("fp32",)


def early_env(argv: Sequence[str]) -> None:
    """``--isa avx2`` re-executes first (:func:`reexec_for_isa`). Apply ``--omp-passive``
    before torch is imported (libgomp reads its environment when it is loaded):
    OMP_WAIT_POLICY=PASSIVE makes idle OpenMP threads sleep instead of spin, which matters
    when other processes share the cores. cad's heap tuning is applied as the CLI's entry
    point applies it. A ``compile`` variant gets a fresh inductor cache directory (set
    TORCHINDUCTOR_CACHE_DIR to measure a warm cache)."""
    reexec_for_isa(argv)
    if "--omp-passive" in argv:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from cad.heap import reuse_freed_memory

    reuse_freed_memory()  # a benchmark is an entry point: cad's side runs as `cad run` does
    if any("compile" in arg for arg in argv) and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        import tempfile  # a cold inductor cache: report what a first compile really costs

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cad-bench-inductor-")


def setup_threads(threads: int | None) -> dict[str, Any]:
    """Set torch's intra-op threads (None: leave the default) and describe the setup."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return {
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp spins)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def add_common_args(parser: Any) -> None:
    parser.add_argument("--quick", action="store_true", help="small version (~1-2 min)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for both sides (default: torch's, = cores)",
    )
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE for both sides (set before torch loads)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/)")
    parser.add_argument(
        "--isa",
        default="native",
        choices=["native", "avx2"],
        help="avx2: re-run in the emulated AVX2-only class (ATEN_CPU_CAPABILITY=avx2, "
        "ONEDNN_MAX_CPU_ISA=AVX2, FBGEMM_ENABLE_INSTRUCTIONS=AVX2); figures are labelled emulated",
    )


def load_note(start: Sequence[float], end: Sequence[float]) -> str:
    """The load before and after; judged by the load before the benchmark started, since
    the load at the end counts the benchmark itself (a 2-core run ends near 2)."""
    note = f"load average {tuple(start)} -> {tuple(end)} on {os.cpu_count()} cores"
    if under_load(start):
        note += "  (UNDER LOAD: other processes shared the CPUs; compare ratios, not absolutes)"
    return note


def as_plain_script(fn: Callable) -> Callable:
    """``fn`` run with the C library's heap as a plain script has it (glibc's mmap
    threshold at its adaptive maximum, freed blocks unmapped), then cad's heap reuse
    (``cad.heap``) restored: in one process, the obvious alternative must not get cad's
    allocator setting for free. Large free blocks already in this process's heap are still
    reused (glibc prefers them to a new mapping), so if anything this favours the plain side;
    the benchmarks report page faults or CPU time per side to show what happened."""

    def run():
        from cad.heap import glibc_default_like, reuse_freed_memory

        glibc_default_like()
        try:
            return fn()
        finally:
            reuse_freed_memory()

    return run


def with_threads(n: int | None, fn: Callable) -> Callable:
    """``fn`` run with ``n`` torch intra-op threads, restored afterwards (None: unchanged)."""
    if n is None:
        return fn

    def run():
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run
