"""Which spatial pyramid should the probe pool? Training-fold cross-validation only.

On the validity phantom of ``transfer_validity`` (64 patients, phantom seed 101) and its
split seeds, for cad's offline pretrained weights and for random weights, extracts the
first candidate nodes of the backbone with each ``extract.grid`` and scores them with the
probe's SVM by the split stage's patient folds, as the probe stage does. Only training
patients take part: the held-out patients never decide the design.

    .venv/bin/python -m benchmarks.probe_pyramid [--seeds 0 1 2] [--nodes 3]
        [--grids 1 1,2 1,3 1,2,3 1,2,4] [--workdir DIR]

Prints a table of CV F1 per (seed, weights, grid, node) and the grid that wins at each
seed and weights' best node; writes ``results/probe_pyramid.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT, machine_info, write_result
from benchmarks.transfer_validity import base_overrides


def pipeline_data(seed: int, workdir: Path, weights: str):
    """The method arm's pipeline for ``seed`` (its artifacts are reused when present)."""
    from cad.api import run_pipeline
    from cad.config import load_config

    args = argparse.Namespace(patients=64, phantom_seed=101, quick=False, set=[])
    overrides = base_overrides(args, seed) + [f"backbones=[{{name: resnet50, weights: {weights}}}]"]
    cfg = load_config(ROOT / "pipelines/breast_mri.yaml", overrides)
    return cfg, run_pipeline(cfg, workdir, track=False)


def cv_scores(cfg, result, grid: tuple[int, ...], nodes: list[str]) -> dict[str, float]:
    from cad.backbones import get_spec
    from cad.device import select_runtime
    from cad.features.extract import extract_features
    from cad.finetune.model import Normalize
    from cad.pipeline.stages.layers import load_backbone
    from cad.probe.svm import score_nodes

    chain = result.chains[0]
    spec = get_spec(cfg.backbones[0].name)
    model, _, _ = load_backbone(cfg.backbones[0], cfg.input.in_chans, None, chain.pretrained)
    training = result.data.augment
    samples = training.samples()
    folds = result.data.split.assignment().sample_folds(samples)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    features = extract_features(
        model,
        nodes,
        training.images(),
        Normalize(spec.mean, spec.std, cfg.input.in_chans),
        select_runtime(cfg.extract.precision),
        32,
        cfg.extract.pooling,
        grid=grid,
    )
    depths = {node: i for i, node in enumerate(nodes)}
    scores = score_nodes(features, depths, labels, folds, cfg.probe, cfg.balance)
    return {s.node: round(s.f1_mean, 4) for s in scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nodes", type=int, default=3, help="the first N candidate nodes")
    parser.add_argument("--grids", nargs="+", default=["1", "1,2", "1,3", "1,2,3", "1,2,4"])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from cad.backbones import get_spec

    grids = [tuple(int(g) for g in text.split(",")) for text in args.grids]
    nodes = list(get_spec("resnet50").nodes)[: args.nodes]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="cad-pyramid-"))
    start, rows = time.perf_counter(), []
    for seed in args.seeds:
        for weights in ("pretrain", "random"):
            cfg, result = pipeline_data(seed, root / f"seed{seed}", weights)
            for grid in grids:
                scores = cv_scores(cfg, result, grid, nodes)
                rows.append({"seed": seed, "weights": weights, "grid": list(grid), **scores})
                cells = "  ".join(f"{n} {f:.3f}" for n, f in scores.items())
                print(f"seed {seed} {weights:8s} grid {str(list(grid)):10s} {cells}", flush=True)
    wins: dict[str, int] = {}
    for seed in args.seeds:
        for weights in ("pretrain", "random"):
            mine = [r for r in rows if r["seed"] == seed and r["weights"] == weights]
            best = max(mine, key=lambda r: max(r[n] for n in nodes))
            wins[str(best["grid"])] = wins.get(str(best["grid"]), 0) + 1
    print("grid with the best node's highest CV F1, per seed and weights:", wins)
    write_result(
        "probe_pyramid",
        {
            "machine": machine_info(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "wall_s": round(time.perf_counter() - start, 1),
            "rows": rows,
            "wins": wins,
        },
    )


if __name__ == "__main__":
    main()
