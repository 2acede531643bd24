"""Wall time of ``cad run`` by stage: a fresh workdir, a second invocation (all reused),
and a second fresh workdir (reusing only the user-level pretrained-weights cache).

The weights cache starts empty (a private ``CAD_CACHE``) unless ``--cache DIR`` is given,
so the first figure includes pretraining wherever the pipeline needs it.

Runs the CLI exactly as a user does (``cad run PIPELINE --workdir DIR``) in a child
process, twice, and reads each invocation's ``summary.json`` "stages" (wall seconds per
stage as the runner measured them) plus the process wall time (imports, MLflow logging
and the report included). The second invocation must reuse every stage; its wall time
is what a user waits for a rerun with nothing changed.

    .venv/bin/python -m benchmarks.bench_pipeline            # pipelines/breast_mri.yaml (long)
    .venv/bin/python -m benchmarks.bench_pipeline --quick    # pipelines/smoke.yaml
        [--workdir DIR --keep] [--no-track] [--set key=value ...]

Writes ``benchmarks/results/bench_pipeline.json`` (``bench_pipeline_quick.json`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, loadavg, machine_info, under_load, write_result  # noqa: E402


def cad_run(
    pipeline: Path,
    workdir: Path,
    track: bool,
    overrides: list[str],
    env: dict[str, str] | None = None,
) -> dict:
    cad = Path(sys.executable).with_name("cad")
    cmd = [str(cad)] if cad.exists() else [sys.executable, "-c", "from cad.cli import app; app()"]
    cmd += ["run", str(pipeline), "--workdir", str(workdir)]
    cmd += [] if track else ["--no-track"]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"cad run failed with exit code {proc.returncode}: {' '.join(cmd)}")
    summary = json.loads((workdir / "summary.json").read_text())
    return {
        "command": " ".join(cmd),
        "process_wall_s": round(wall, 2),
        "pipeline_wall_s": summary["wall_s"],
        "stages": summary["stages"],
        "loadavg_end": loadavg(),
    }


def resolved_config(workdir: Path) -> dict:
    """What the run actually did (the YAMLs change): the knobs that set its cost."""
    import yaml

    cfg = yaml.safe_load((workdir / "config.resolved.yaml").read_text())
    return {
        "phantom": cfg["data"]["phantom"],
        "input_size": cfg["input"]["size"],
        "backbones": [b["name"] for b in cfg["backbones"]],
        "rounds": cfg["transfer"]["rounds"],
        "epochs": cfg["finetune"]["epochs"],
        "augment_copies": cfg["augment"]["copies"],
        "folds": cfg["split"]["folds"],
    }


def by_stage(stages: list[dict]) -> dict[str, dict]:
    """Sum wall seconds (and count runs/reuses) per stage name."""
    out: dict[str, dict] = defaultdict(lambda: {"wall_s": 0.0, "runs": 0, "reused": 0})
    for s in stages:
        row = out[s["stage"]]
        row["wall_s"] = round(row["wall_s"] + s["wall_s"], 3)
        row["reused" if s["reused"] else "runs"] += 1
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pipelines/smoke.yaml")
    parser.add_argument("--pipeline", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--no-track", action="store_true", help="skip MLflow logging")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="run cad with OMP_WAIT_POLICY=PASSIVE (see bench_threads.py)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--cache", type=Path, default=None, help="CAD_CACHE (default: empty)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    default = "smoke.yaml" if args.quick else "breast_mri.yaml"
    pipeline = args.pipeline or ROOT / "pipelines" / default
    name = "bench_pipeline_quick" if args.quick else "bench_pipeline"
    machine = machine_info()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cad-bench-pipeline-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty: the first invocation must start fresh")
    print(f"cad run {pipeline.name} in {workdir}  (load {machine['loadavg_start']})", flush=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="cad-bench-cache-"))
    other = Path(tempfile.mkdtemp(prefix="cad-bench-pipeline-2-"))
    try:
        env = {"OMP_WAIT_POLICY": "PASSIVE"} if args.omp_passive else {}
        env["CAD_CACHE"] = str(cache)
        first = cad_run(pipeline, workdir, not args.no_track, args.overrides, env)
        resolved = resolved_config(workdir)
        print(f"  resolved: {resolved}", flush=True)
        print(f"  fresh: {first['process_wall_s']:.1f} s", flush=True)
        second = cad_run(pipeline, workdir, not args.no_track, args.overrides, env)
        print(f"  rerun: {second['process_wall_s']:.1f} s", flush=True)
        third = cad_run(pipeline, other, not args.no_track, args.overrides, env)
        print(f"  second workdir (cached weights): {third['process_wall_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(other, ignore_errors=True)
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    fresh, again = by_stage(first["stages"]), by_stage(second["stages"])
    not_reused = [s["label"] for s in second["stages"] if not s["reused"]]
    print(f"\n{'stage':<10} {'runs':>4} {'fresh s':>9} {'share':>6} {'rerun s':>8}")
    total = sum(r["wall_s"] for r in fresh.values()) or 1.0
    for stage, row in fresh.items():
        print(
            f"{stage:<10} {row['runs']:>4} {row['wall_s']:>9.1f} {row['wall_s'] / total:>6.0%} "
            f"{again.get(stage, {}).get('wall_s', 0.0):>8.2f}"
        )
    print("\nslowest stage runs (fresh):")
    for s in sorted(first["stages"], key=lambda s: -s["wall_s"])[:8]:
        print(f"  {s['label']:<28} {s['wall_s']:8.1f} s  ({s['items']} items)")
    ratio = first["process_wall_s"] / second["process_wall_s"]
    load = loadavg()
    print(
        f"\nfresh {first['process_wall_s']:.1f} s, rerun {second['process_wall_s']:.1f} s "
        f"(fresh/rerun {ratio:.0f}x); rerun recomputed: {not_reused or 'nothing'}; "
        f"second workdir {third['process_wall_s']:.1f} s"
    )
    print(
        f"load average {machine['loadavg_start']} -> {load}"
        + ("  (UNDER LOAD: other work shared the CPUs)" if under_load(load) else "")
    )
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "pipeline": str(pipeline.relative_to(ROOT))
            if pipeline.is_relative_to(ROOT)
            else str(pipeline),
            "overrides": args.overrides,
            "tracking": not args.no_track,
            "child_env": {k: v for k, v in env.items() if k != "CAD_CACHE"},
            "resolved": resolved,
            "fresh": first,
            "rerun": second,
            "second_workdir": third,
            "fresh_by_stage": fresh,
            "rerun_by_stage": again,
            "rerun_recomputed": not_reused,
            "fresh_over_rerun": ratio,
            "loadavg_end": load,
            "under_load": under_load(load),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
