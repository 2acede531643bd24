"""OpenMP threads and wait policy when other processes share the cores.

torch's CPU kernels run on libgomp. By default its idle threads spin; every parallel
region (each conv, BN, ReLU, ...) ends in a barrier, and when one of torch's threads has
been descheduled because another process wants the core, the others wait for it. On a
2-core machine shared with one other busy process that costs far more than the second
thread gains. This measures cad's extraction (``extract_features``, ``select_runtime
("auto")``) and the fp32 script in child processes under each setting, interleaved:

- ``default``: torch's default threads (= cores), OMP_WAIT_POLICY unset (libgomp spins);
- ``passive``: the same threads with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
- ``1thread``: ``torch.set_num_threads(1)``.

``--background K`` starts K busy-looping processes of our own for the duration (a
controlled stand-in for "someone else's job"), so the effect is reproducible on an idle
machine; the machine's own load comes on top and is printed.

    .venv/bin/python -m benchmarks.bench_threads [--quick] [--background 0,1] [--reps 2]

Writes ``benchmarks/results/bench_threads.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (  # noqa: E402
    RESULTS,
    load_note,
    loadavg,
    machine_info,
    under_load,
    write_result,
)

SETTINGS = {
    "default": ({}, None),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "1thread": ({}, 1),
}

CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
threads, backbone, n, size = json.loads(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[2])
from benchmarks.bench_extract import fp32_script
from cad.backbones import create_backbone, get_spec
from cad.device import select_runtime
from cad.heap import reuse_freed_memory
from cad.features.extract import extract_features
from cad.finetune.model import Normalize
spec = get_spec(backbone)
torch.manual_seed(0)
model = create_backbone(backbone, "random", 3).model.eval()
images = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
norm = Normalize(spec.mean, spec.std, 3)
reuse_freed_memory()  # as `cad run` tunes its process
runtime = select_runtime("auto")
sides = {"cad": lambda: extract_features(model, spec.nodes, images, norm, runtime, 32),
         "fp32": lambda: fp32_script(model, spec.nodes, images, norm, 32)}
best = {k: float("inf") for k in sides}
for _ in range(2):
    for k, fn in sides.items():
        t = time.perf_counter(); fn(); best[k] = min(best[k], time.perf_counter() - t)
print(json.dumps({"threads": torch.get_num_threads(),
                  **{f"{k}_images_per_s": n / v for k, v in best.items()}}))
"""


def spin_forever() -> None:  # the background job: one core's worth of pure-Python work
    while True:
        pass


def run_child(setting: str, backbone: str, n: int, size: int) -> dict:
    env_extra, threads = SETTINGS[setting]
    env = {**os.environ, **env_extra}
    args = json.dumps([threads, backbone, n, size])
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, args, str(Path(__file__).resolve().parents[1])],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "child_wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--background",
        default=None,
        help="comma list of background job counts (default 0,1; quick 1)",
    )
    parser.add_argument("--reps", type=int, default=None, help="interleaved rounds (2; quick 1)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=None, help="64; quick 32")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.images = args.images or (32 if args.quick else 64)
    levels = [int(v) for v in (args.background or ("1" if args.quick else "0,1")).split(",")]
    reps = args.reps or (1 if args.quick else 2)
    machine = machine_info()
    import multiprocessing as mp

    results: dict[str, dict] = {}
    for level in levels:
        spinners = [mp.Process(target=spin_forever, daemon=True) for _ in range(level)]
        for p in spinners:
            p.start()
        try:
            rows: dict[str, list[dict]] = {s: [] for s in SETTINGS}
            for _ in range(reps):
                for setting in SETTINGS:
                    rows[setting].append(run_child(setting, args.backbone, args.images, args.size))
                    print(f"  background {level}: {setting:<8} {rows[setting][-1]}", flush=True)
        finally:
            for p in spinners:  # only the processes started here, by their own handle
                p.terminate()
                p.join()
        results[f"background_{level}"] = {
            s: {
                "cad_images_per_s": max(r["cad_images_per_s"] for r in rs),
                "fp32_images_per_s": max(r["fp32_images_per_s"] for r in rs),
                "threads": rs[0]["threads"],
                "runs": rs,
            }
            for s, rs in rows.items()
        }
        results[f"background_{level}"]["loadavg"] = loadavg()

    end = loadavg()
    print(f"\n{args.backbone}, {args.images} images {args.size}px, best img/s of {reps} child runs")
    print(
        f"{'background':>10} {'setting':<8} {'threads':>7} {'cad':>8} {'fp32':>8} "
        f"{'cad vs default':>15}"
    )
    for level in levels:
        r = results[f"background_{level}"]
        base = r["default"]["cad_images_per_s"]
        for s in SETTINGS:
            print(
                f"{level:>10} {s:<8} {r[s]['threads']:>7} {r[s]['cad_images_per_s']:>8.1f} "
                f"{r[s]['fp32_images_per_s']:>8.1f} {r[s]['cad_images_per_s'] / base:>14.2f}x"
            )
    print(load_note(machine["loadavg_start"], end))
    name = "bench_threads_quick" if args.quick else "bench_threads"
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "config": {
                "backbone": args.backbone,
                "images": args.images,
                "size": args.size,
                "reps": reps,
                "background": levels,
            },
            "results": results,
            "loadavg_end": end,
            "under_load": under_load(machine["loadavg_start"]) or under_load(end),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
