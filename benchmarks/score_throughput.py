"""How well does ``cad score`` hide DICOM I/O? Throughput and memory vs. the bare forward.

For a small phantom export and one ``--scale`` times larger (same patients' shape, more
patients), measures in one run:

(a) the bare model forward (``cad.finetune.predict.Predictor``, the runtime and batch size
    scoring uses) on the same preprocessed slices already in memory, in slices/s;
(b) ``score_folder`` end to end (grouping pass, decode workers, preprocessing, inference,
    CSV writing) in a child process, in slices/s, with the heap tuned as the ``cad`` CLI
    does; then once more for its peak memory: the main process's and the largest
    worker's peak RSS, and the peak summed RSS and PSS of the whole process tree (polled
    from /proc every 200 ms). Reading smaps_rollup for PSS costs ~50 ms of CPU per poll
    (a quarter of a core at 200 ms), so the timed run reads only each process's ``stat``
    and ``statm``; PSS comes from the second run.

(c) scoring's decoding alone, in this process: CPU ms per slice of the header pass and of
    the study workers' ``process_study``, without worker start-up or pipes.

The ratio (b)/(a) says how much of the model's speed survives the I/O (also in the steady
state: from the first patient's rows to the last, without start-up); flat peak memory
between the two sizes says scoring streams. On a shared machine wall-clock rates depend on
the load, so CPU seconds per slice (all threads and processes) are reported as well: their
ratio is the share of scoring's CPU spent in the forward pass itself. Writes
``benchmarks/results/score_throughput.json``.

    .venv/bin/python -m benchmarks.score_throughput [--patients 4] [--scale 10] \\
        [--slices 24] [--size 64] [--workers 2] [--batch-size 64] [--backbone resnet18] \\
        [--isa avx2]

``--isa avx2`` re-runs the benchmark in the emulated AVX2-only class (its scoring child
inherits the caps); the first line and the JSON name the CPU class of every figure.

Clinical size: ``--backbone resnet50 --size 224 --patients 8 --scale 10`` (writes
``results/score_throughput_resnet50_224.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import cpu_banner, machine_info, reexec_for_isa
from cad.config import InputConfig

RESULTS = Path(__file__).resolve().parent / "results" / "score_throughput.json"


def make_package(directory: Path, size: int, backbone: str) -> Path:
    """A transfer model with random weights, cut at the registry's two middle candidate
    nodes (resnet18: layer2 -> layer3), packaged like ``finetune`` does."""
    import torch

    from cad.artifacts.model_package import HeadSpec, ModelMeta, Nodes
    from cad.backbones import create_backbone, get_spec
    from cad.config import InputConfig
    from cad.finetune.model import build_transfer_model, output_shape
    from cad.finetune.package import save_package

    torch.manual_seed(0)
    spec = get_spec(backbone)
    middle = len(spec.nodes) // 2
    nodes = spec.nodes[middle], spec.nodes[middle + 1]
    model = build_transfer_model(
        create_backbone(backbone, "random", 3).model,
        *nodes,
        mean=spec.mean,
        std=spec.std,
        in_chans=3,
        size=size,
        hidden=64,
        dropout=0.1,
    )
    meta = ModelMeta(
        backbone=backbone,
        round=1,
        weights_source="random",
        nodes=Nodes(finetune=nodes[0], connection=nodes[1]),
        head=HeadSpec(hidden=64, dropout=0.1),
        classes=["non-tumour", "tumour"],
        in_chans=3,
        input=InputConfig(size=size),
        mean=list(spec.mean),
        std=list(spec.std),
        threshold=0.5,
        training_data_hash="benchmark",
        connection_shape=list(output_shape(model.body, 3, size, "features")),
        frozen_modules=0,
        trainable_params=0,
        frozen_params=0,
        best_epoch=1,
        best_val_f1=0.0,
    )
    return save_package(model.eval(), meta, directory)


def preprocessed(root: Path, spec: InputConfig) -> np.ndarray:
    """Every slice of every study below ``root``, preprocessed as scoring does."""
    from cad.data.preprocess import study_slices
    from cad.io.index import index_folder
    from cad.io.reader import read_records

    arrays = [study_slices(s, spec) for s in read_records(index_folder(root, workers=2)).studies]
    return np.concatenate(arrays)


def decode_cost(root: Path, spec: InputConfig, repeats: int = 2) -> tuple[float, float, int]:
    """CPU ms per slice of scoring's decoding, in this process (no worker start-up, no
    pipe): the header pass over every file, and the study workers' ``process_study``
    (assembly, pixel decode of the needed phases, preprocessing). Best of ``repeats``;
    CPU time, so other load on the machine moves it less than wall time."""
    from cad.heap import reuse_freed_memory
    from cad.io.files import walk
    from cad.io.index import index_paths
    from cad.io.pool import WorkerPool
    from cad.scoring.stream import process_study

    reuse_freed_memory()  # as in the workers (``init_worker``)
    secret, paths = b"benchmark".ljust(32, b"0"), walk(root)
    header = study = float("inf")
    slices = 0
    for _ in range(repeats):
        start = time.process_time()
        with WorkerPool(0) as pool:
            index = index_paths(paths, pool, secret)
        header = min(header, time.process_time() - start)
        start = time.process_time()
        slices = sum(process_study(t, spec, secret, False).slices for t in index.studies)
        study = min(study, time.process_time() - start)
    return 1e3 * header / slices, 1e3 * study / slices, len(paths)


def bare_forward(
    package: Path, images: np.ndarray, batch_size: int, repeats: int = 2
) -> tuple[float, float]:
    """Best-of-``repeats`` slices/s of scoring's predictor on in-memory slices, and the CPU
    seconds (all threads) per slice of that repeat."""
    from cad.device import select_runtime
    from cad.finetune.package import load_package
    from cad.finetune.predict import Predictor

    runtime = select_runtime("auto")
    predict = Predictor(runtime.prepare(load_package(package).model), runtime, batch_size)
    predict(images[:batch_size])  # warm-up
    best, best_cpu = float("inf"), 0.0
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        predict(images)
        if time.perf_counter() - start < best:
            best, best_cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(images) / best, best_cpu / len(images)


def _tree(pid: int, pss: bool = True) -> dict[int, tuple[int, int, float]]:
    """Per process of ``pid``'s tree (it included): (RSS bytes, PSS bytes, CPU seconds).

    RSS counts shared library pages once per process (torch alone maps ~0.6 GB in every
    worker); PSS splits shared pages between the processes that map them. Without
    ``pss`` RSS comes from the cheap ``statm`` and PSS is 0.
    """
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    out, stack = {}, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        rss = proportional = 0
        try:
            if not pss:
                with open(f"/proc/{current}/statm") as handle:
                    rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                out[current] = (rss, 0, cpu.get(current, 0.0))
                continue
            with open(f"/proc/{current}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        proportional = int(line.split()[1]) * 1024
        except OSError:
            continue
        out[current] = (rss, proportional, cpu.get(current, 0.0))
    return out


def score_in_child(
    package: Path, root: Path, out: Path, workers: int, batch_size: int, pss: bool
) -> dict:
    """Run ``score_folder`` in a fresh process; its timing, CPU and memory figures.

    The child's process tree (main process, fork server, decode workers) is polled from
    /proc every 200 ms: peak summed RSS (and PSS with ``pss``), the largest single
    process, and CPU time.
    """
    command = [
        sys.executable,
        "-m",
        "benchmarks.score_throughput",
        "--child",
        str(package),
        str(root),
        str(out),
        str(workers),
        str(batch_size),
    ]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "CAD_SECRET": "benchmark-" + "0" * 32},
    )
    peak_rss = peak_pss = 0
    main_rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    while child.poll() is None:
        tree = _tree(child.pid, pss)
        peak_rss = max(peak_rss, sum(v[0] for v in tree.values()))
        peak_pss = max(peak_pss, sum(v[1] for v in tree.values()))
        for pid, (rss, _, seconds) in tree.items():
            main_rss[pid] = max(main_rss.get(pid, 0), rss)
            cpu[pid] = max(cpu.get(pid, 0.0), seconds)
        time.sleep(0.2)
    stdout = child.stdout.read() if child.stdout else ""
    if child.returncode not in (0, 1):
        raise SystemExit(f"scoring child failed with exit code {child.returncode}")
    workers_rss = [rss for pid, rss in main_rss.items() if pid != child.pid]
    return {
        **json.loads(stdout.strip().splitlines()[-1]),
        "tree_peak_rss_mb": peak_rss / 2**20,
        "tree_peak_pss_mb": peak_pss / 2**20,
        "worker_peak_rss_mb": max(workers_rss, default=0) / 2**20,
        "tree_cpu_s": sum(cpu.values()),
        "workers_cpu_s": sum(v for pid, v in cpu.items() if pid != child.pid),
    }


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over
    ``execve`` from the forked parent, so it would report the benchmark's own footprint."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_main(package: str, root: str, out: str, workers: str, batch_size: str) -> None:
    from cad.cli.app import tune_process
    from cad.scoring.api import score_folder

    tune_process()  # what the `cad` CLI does at start-up, before any command runs

    commits: list[float] = []  # when each patient's rows were committed
    start = time.perf_counter()
    summary = score_folder(
        package,
        root,
        out,
        workers=int(workers),
        batch_size=int(batch_size),
        progress=False,
        _on_commit=lambda done: commits.append(time.perf_counter()),
    )
    seconds = time.perf_counter() - start
    # steady state: from the first patient's commit to the last (phantom patients all have
    # the same number of slices), i.e. without start-up, model loading and the header pass
    per_patient = summary.slices / max(len(commits), 1)
    steady = (
        (summary.slices - per_patient) / (commits[-1] - commits[0])
        if len(commits) > 1
        else float("nan")
    )
    print(
        json.dumps(
            {
                "slices": summary.slices,
                "files": summary.files,
                "seconds": seconds,
                "slices_per_s": summary.slices / seconds,
                "steady_slices_per_s": steady,
                "main_peak_rss_mb": peak_rss_mb(),
            }
        )
    )
    sys.exit(summary.exit_code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4, help="patients in the small export")
    parser.add_argument("--scale", type=int, default=10, help="the large export is this x larger")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, help="matrix and network input size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18", help="e.g. resnet50 at --size 224")
    parser.add_argument(
        "--isa",
        default="native",
        choices=["native", "avx2"],
        help="avx2: re-run in the emulated AVX2-only class (cad.cpu.EMULATION_ENV)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/score_throughput.json (resnet18, 64 px), else "
        "results/score_throughput_<backbone>_<size>[_avx2emu].json",
    )
    args = parser.parse_args()
    reexec_for_isa(sys.argv)
    if args.out is None:
        default = args.backbone == "resnet18" and args.size == 64 and args.isa == "native"
        suffix = "_avx2emu" if args.isa == "avx2" else ""
        name = f"score_throughput_{args.backbone}_{args.size}{suffix}.json"
        args.out = RESULTS if default else RESULTS.with_name(name)

    from cad.data.phantom import generate_phantom
    from cad.device import describe, select_runtime

    print(cpu_banner(), flush=True)
    results: dict = {
        "config": vars(args) | {"out": str(args.out)},
        "runtime": describe(select_runtime("auto")),
        "machine": machine_info(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="cad-bench-") as tmp:
        package = make_package(Path(tmp) / "model", args.size, args.backbone)
        spec = InputConfig(size=args.size)
        for name, patients in (("small", args.patients), ("large", args.patients * args.scale)):
            info = generate_phantom(
                Path(tmp) / name, patients=patients, slices=args.slices, size=args.size, seed=3
            )
            header_ms, study_ms, _ = decode_cost(info.dicom_root, spec)
            images = preprocessed(info.dicom_root, spec)
            forward, forward_cpu = bare_forward(package, images, args.batch_size)
            del images
            root, out = info.dicom_root, Path(tmp) / name
            run = (args.workers, args.batch_size)
            scored = score_in_child(package, root, out.with_suffix(".csv"), *run, pss=False)
            memory = score_in_child(package, root, out.with_suffix(".memory.csv"), *run, pss=True)
            score_cpu = scored["tree_cpu_s"] / scored["slices"]
            entry = {
                "patients": patients,
                "files": scored["files"],
                "slices": scored["slices"],
                "forward_slices_per_s": forward,
                "score_slices_per_s": scored["slices_per_s"],
                "score_steady_slices_per_s": scored["steady_slices_per_s"],
                "steady_ratio": scored["steady_slices_per_s"] / forward,
                "workers_cpu_ms_per_slice": 1e3 * scored["workers_cpu_s"] / scored["slices"],
                "decode_header_cpu_ms_per_slice": header_ms,
                "decode_study_cpu_ms_per_slice": study_ms,
                "ratio": scored["slices_per_s"] / forward,
                "score_seconds": scored["seconds"],
                "forward_cpu_ms_per_slice": 1e3 * forward_cpu,
                "score_cpu_ms_per_slice": 1e3 * score_cpu,
                "cpu_ratio": forward_cpu / score_cpu,
                "main_peak_rss_mb": memory["main_peak_rss_mb"],
                "worker_peak_rss_mb": memory["worker_peak_rss_mb"],
                "tree_peak_rss_mb": memory["tree_peak_rss_mb"],
                "tree_peak_pss_mb": memory["tree_peak_pss_mb"],
                "memory_run_steady_slices_per_s": memory["steady_slices_per_s"],
                "load_average_1min": os.getloadavg()[0],
            }
            results["sizes"][name] = entry
            print(
                f"{name:5s}: {patients} patients, {entry['files']} files, {entry['slices']} "
                f"slices | forward {forward:6.1f} slices/s | cad score "
                f"{entry['score_slices_per_s']:6.1f} slices/s ({entry['score_seconds']:.1f} s)"
                f" | ratio {entry['ratio']:.3f}, steady state "
                f"{entry['score_steady_slices_per_s']:.1f} slices/s = {entry['steady_ratio']:.3f}"
                f" | CPU ms/slice forward "
                f"{entry['forward_cpu_ms_per_slice']:.1f}, score "
                f"{entry['score_cpu_ms_per_slice']:.1f} (ratio {entry['cpu_ratio']:.3f}; decode "
                f"workers {entry['workers_cpu_ms_per_slice']:.1f}, of which decoding "
                f"{header_ms + study_ms:.1f}: header pass {header_ms:.1f} + studies "
                f"{study_ms:.1f}) | "
                f"peak RSS main {entry['main_peak_rss_mb']:.0f} MB, largest worker "
                f"{entry['worker_peak_rss_mb']:.0f} MB, tree RSS "
                f"{entry['tree_peak_rss_mb']:.0f} MB / PSS {entry['tree_peak_pss_mb']:.0f} MB"
                f" | load {entry['load_average_1min']:.1f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:])
    else:
        main()
