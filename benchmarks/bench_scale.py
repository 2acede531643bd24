"""Scale-out overhead on one machine: each engine against the local path it replaces.

Three comparisons, each interleaved (engine, local, engine, local, ...) so both sides see
the same load, every side a fresh ``cad`` process as a user would start it:

(a) ``cad run pipelines/smoke.yaml --executor ray`` (a machine-local Ray started by cad)
    against the local executor, with ``--backbones`` random-weight backbones, each side in
    a fresh workdir: the wall time of the whole run, and that the summary metrics agree;
(b) fine-tuning under ``torchrun --nproc_per_node 2`` against one process, on a workdir
    whose data, extraction and probe are finished (``--force finetune``): the finetune
    stage's wall time from the summary, and the losses' largest relative difference;
(c) ``cad score --executor ray`` (Ray Data decoding, model actors) against local
    ``cad score --workers W`` on a phantom export, with the package (b) fine-tuned:
    slices/s, and that the predictions are byte-identical.

On 2 cores none of this can be faster than the local path (Ray's start-up, one more
process per rank, the actors' CPUs taken from decoding): the figures measure the overhead
that more machines or GPUs have to amortise. Writes ``results/bench_scale.json``
(``--quick``: ``results/bench_scale_quick.json``).

    .venv/bin/python -m benchmarks.bench_scale [--quick] [--reps 3] [--backbones 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, interleave, loadavg, machine_info, under_load, write_result

BACKBONES = ["resnet18", "mobilenet_v3_small", "lenet5"]
ENV = {"CAD_SECRET": "bench-scale-" + "0" * 52, "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cad(*args: str, launcher: list[str] | None = None) -> float:
    """Run one cad command; its wall seconds."""
    command = [*(launcher or [sys.executable]), "-m", "cad", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    start = time.perf_counter()
    proc = subprocess.run(command, env={**env, **ENV}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:  # torchrun exits 1 when a rank failed
        raise SystemExit(f"{' '.join(command)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def _torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", str(ranks), "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port())]  # fmt: skip


def _pipeline_sets(backbones: int, epochs: int) -> list[str]:
    names = ", ".join(f"{{name: {b}, weights: random}}" for b in BACKBONES[:backbones])
    sets = [f"backbones=[{names}]", f"finetune.epochs={epochs}", f"finetune.patience={epochs}"]
    return [arg for item in sets for arg in ("--set", item)]


def _summary(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "summary.json").read_text())


def bench_executor(tmp: Path, reps: int, backbones: int, epochs: int) -> dict[str, Any]:
    sets = _pipeline_sets(backbones, epochs)
    counter = {"ray": 0, "local": 0}
    last: dict[str, Path] = {}

    def side(executor: str) -> Any:
        def run() -> float:
            counter[executor] += 1
            workdir = tmp / f"run-{executor}-{counter[executor]}"
            seconds = _cad("run", str(ROOT / "pipelines/smoke.yaml"), "--workdir", str(workdir),
                           "--no-track", "--executor", executor, *sets)  # fmt: skip
            last[executor] = workdir
            return seconds

        return run

    timings, _ = interleave({"ray": side("ray"), "local": side("local")}, reps)
    metrics = {
        name: [
            (r["backbone"], r["val_f1"], r["test"]["f1"]["value"])
            for r in _summary(folder)["results"]
        ]  # fmt: skip
        for name, folder in last.items()
    }
    return {
        "backbones": BACKBONES[:backbones],
        "ray": timings["ray"].as_dict(),
        "local": timings["local"].as_dict(),
        "overhead_x": timings["ray"].median / timings["local"].median,
        "same_metrics": metrics["ray"] == metrics["local"],
    }


def _finetune_seconds(workdir: Path) -> float:
    stages = _summary(workdir)["stages"]
    return sum(s["wall_s"] for s in stages if s["stage"] == "finetune" and not s["reused"])


def _history(workdir: Path, ranks: int) -> list[dict[str, str]]:
    for folder in (workdir / "artifacts").glob("finetune-*"):
        meta = json.loads((folder / "manifest.json").read_text())
        if meta.get("data_parallel", {}).get("ranks", 1) == ranks:
            with (folder / "history.csv").open() as handle:
                return list(csv.DictReader(handle))
    return []


def bench_torchrun(tmp: Path, reps: int, epochs: int) -> dict[str, Any]:
    workdir = tmp / "ddp"
    sets = _pipeline_sets(1, epochs)
    sets += ["--set", "finetune.dropout=0", "--set", "finetune.precision=fp32"]
    args = ["run", str(ROOT / "pipelines/smoke.yaml"), "--workdir", str(workdir), "--no-track"]
    _cad(*args, *sets)  # data, extraction and probe, once (untimed)
    stage: dict[str, list[float]] = {"torchrun2": [], "one": []}

    def side(name: str, launcher: list[str] | None) -> Any:
        def run() -> float:
            seconds = _cad(*args, *sets, "--force", "finetune",
                           launcher=launcher() if callable(launcher) else launcher)  # fmt: skip
            stage[name].append(_finetune_seconds(workdir))
            return seconds

        return run

    timings, _ = interleave(
        {"torchrun2": side("torchrun2", lambda: _torchrun(2)), "one": side("one", None)}, reps
    )
    one, two = _history(workdir, 1), _history(workdir, 2)
    worst = max(
        abs(float(b["train_loss"]) - float(a["train_loss"])) / abs(float(a["train_loss"]))
        for a, b in zip(one, two, strict=True)
    )
    return {
        "process_wall": {k: t.as_dict() for k, t in timings.items()},
        "finetune_stage_s": stage,
        "finetune_ratio_x": min(stage["torchrun2"]) / min(stage["one"]),
        "max_rel_train_loss_diff_per_rank_batchnorm": worst,  # resnet18: see README
    }


def bench_scoring(
    tmp: Path, reps: int, patients: int, workers: int, package: Path
) -> dict[str, Any]:
    from cad.data.phantom import generate_phantom

    info = generate_phantom(tmp / "export", patients=patients, slices=16, size=64, seed=5)
    outputs = {"ray": tmp / "ray.csv", "local": tmp / "local.csv"}

    def side(name: str) -> Any:
        def run() -> float:
            outputs[name].unlink(missing_ok=True)
            extra = ["--executor", "ray"] if name == "ray" else []
            return _cad("score", str(info.dicom_root), "--model", str(package), "--out",
                        str(outputs[name]), "--workers", str(workers), *extra)  # fmt: skip

        return run

    timings, _ = interleave({"ray": side("ray"), "local": side("local")}, reps)
    with outputs["local"].open() as handle:
        slices = sum(1 for row in csv.DictReader(handle) if row["level"] == "slice")
    return {
        "patients": patients,
        "slices": slices,
        "ray_slices_per_s": slices / timings["ray"].median,
        "local_slices_per_s": slices / timings["local"].median,
        "ratio_x": timings["local"].median / timings["ray"].median,
        "byte_identical": outputs["ray"].read_bytes() == outputs["local"].read_bytes(),
        "ray": timings["ray"].as_dict(),
        "local": timings["local"].as_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 1 epoch, 4 patients")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backbones", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patients", type=int, default=12, help="phantom patients to score")
    parser.add_argument("--workers", type=int, default=2, help="local decode workers")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.epochs, args.patients = 1, 1, 4
    result: dict[str, Any] = {"machine": machine_info(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="cad-bench-scale-") as tmp:
        os.environ.setdefault("CAD_CACHE", str(Path(tmp) / "cache"))
        result["executor"] = bench_executor(Path(tmp), args.reps, args.backbones, args.epochs)
        print("cad run --executor ray vs local:", json.dumps(result["executor"]["overhead_x"]))
        result["torchrun"] = bench_torchrun(Path(tmp), args.reps, args.epochs)
        print(
            "finetune stage, torchrun 2 ranks / 1 process:", result["torchrun"]["finetune_ratio_x"]
        )
        package = next((Path(tmp) / "ddp" / "artifacts").glob("finetune-*")) / "model"
        result["scoring"] = bench_scoring(
            Path(tmp), args.reps, args.patients, args.workers, package
        )  # the package fine-tuned in (b): resnet18 at 64 px
        print("cad score, local / ray (speed-up of ray):", result["scoring"]["ratio_x"])
    result["loadavg_end"] = loadavg()
    result["under_load"] = under_load(result["loadavg_end"])
    name = "bench_scale_quick" if args.quick else "bench_scale"
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    print("wrote", write_result(name, result))


if __name__ == "__main__":
    main()
