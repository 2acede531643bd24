"""Layer probing: cad's ``score_nodes`` vs the obvious scikit-learn loop, same features.

Features at every candidate node of VGG16, InceptionV3 and ResNet50 (random weights,
extracted once by cad and cached) on the phantom's training images with the pipeline's
patient folds. In one process, interleaved rounds:

- cad: ``cad.probe.svm.score_nodes`` once per backbone, as the probe stage calls it
  (joblib threads over nodes; scaler -> oversampler -> linear SVM fitted inside each
  fold; libsvm's kernel-form linear SVM or liblinear chosen by shape, see ``solver_for``);
- sklearn: per node, sequentially, ``cross_val_score(make_pipeline(StandardScaler(),
  LinearSVC()), X, y, cv=PredefinedSplit(folds), scoring="f1")``;
- cad_seq (diagnostic): ``score_nodes`` with ``n_jobs=1``, to separate the solver from the
  thread parallelism;
- cad_processes (diagnostic): cad's per-node work (``_score_node``) under joblib's process
  backend, as cad ran it before switching to threads.

Prints the time ratio, each side's chosen node per backbone, and where the two SVM
formulations' F1 differ. Two untimed runs explain a difference: ``sklearn_over`` (the
obvious loop plus cad's oversampling inside each fold: isolates hinge/libsvm vs squared
hinge/liblinear) and ``cad_nobal`` (cad without resampling: isolates the oversampling).

    .venv/bin/python -m benchmarks.bench_probe [--quick] [--reps 2] [--threads N]
        [--omp-passive] [--no-explain]

Full: the data of ``pipelines/breast_mri.yaml`` (36 patients, 2 augmented copies, the
pipeline's sample count); quick: ``pipelines/smoke.yaml``. Writes
``benchmarks/results/bench_probe.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._common import early_env  # noqa: E402

early_env(sys.argv)

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import PredefinedSplit, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from benchmarks._common import (  # noqa: E402
    RESULTS,
    ROOT,
    add_common_args,
    cache_dir,
    interleave,
    load_note,
    loadavg,
    machine_info,
    phantom_training_set,
    setup_threads,
    under_load,
    write_result,
)
from cad.probe.svm import _score_node, choose_finetune_node, score_nodes, solver_for  # noqa: E402

BACKBONES = ("vgg16", "inception_v3", "resnet50")


def cached_features(data, name: str, workdir: Path) -> dict[str, np.ndarray]:
    """cad's features of ``name`` on ``data.images``, extracted once and kept as .npy."""
    import torch

    from cad.backbones import create_backbone, get_spec
    from cad.device import select_runtime
    from cad.features.extract import extract_features
    from cad.finetune.model import Normalize

    spec = get_spec(name)
    directory = workdir / f"features-{name}-{data.key}"
    if (directory / "done").exists():
        return {n: np.load(directory / f"{n}.npy") for n in spec.nodes}
    torch.manual_seed(0)
    model = create_backbone(name, "random", data.images.shape[1]).model
    start = time.perf_counter()
    features = extract_features(
        model,
        spec.nodes,
        data.images,
        Normalize(spec.mean, spec.std, data.images.shape[1]),
        select_runtime("auto"),
        32,
    )
    print(
        f"  extracted {name} features in {time.perf_counter() - start:.0f} s (cached in "
        f"{directory})",
        flush=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    for node, matrix in features.items():  # a benchmark cache, not an artifact
        np.save(directory / f"{node}.npy", matrix)
    (directory / "done").write_text("")
    return features


def sklearn_loop(features: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray) -> dict:
    """The obvious script: one cross_val_score per node, sequentially."""
    cv = PredefinedSplit(folds)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for node, x in features.items():
            scores = cross_val_score(
                make_pipeline(StandardScaler(), LinearSVC()), x, labels, cv=cv, scoring="f1"
            )
            out[node] = float(np.mean(scores))
    return out


def sklearn_oversampled(
    features: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, seed: int
) -> dict:
    """The obvious loop plus random oversampling inside each training fold."""
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import make_pipeline as make_imb_pipeline

    cv = PredefinedSplit(folds)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for node, x in features.items():
            model = make_imb_pipeline(
                StandardScaler(), RandomOverSampler(random_state=seed), LinearSVC()
            )
            out[node] = float(np.mean(cross_val_score(model, x, labels, cv=cv, scoring="f1")))
    return out


def score_nodes_processes(
    features: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, cfg, balance
) -> dict[str, list[float]]:
    """Diagnostic: score_nodes' per-node work in joblib processes, as cad ran it before."""
    from joblib import Parallel, delayed

    nodes = list(features)
    scores = Parallel(n_jobs=cfg.runtime.n_jobs, prefer="processes")(
        delayed(_score_node)(features[n], labels, folds, cfg, balance) for n in nodes
    )
    return dict(zip(nodes, scores, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--no-seq", action="store_true", help="skip the n_jobs=1 diagnostic")
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the untimed sklearn_over / cad_nobal F1 runs",
    )
    args = parser.parse_args()

    machine = machine_info()
    threads = setup_threads(args.threads)
    pipeline = ROOT / "pipelines" / ("smoke.yaml" if args.quick else "breast_mri.yaml")
    overrides: list[str] = []  # the pipeline's data and input size as they are
    workdir = cache_dir(f"data-{pipeline.stem}")
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores; data: {pipeline.name} in {workdir}",
        flush=True,
    )
    data = phantom_training_set(pipeline, overrides, workdir)
    cfg, balance = data.config.probe, data.config.balance
    n = len(data.labels)
    print(
        f"{n} training samples ({int(data.labels.sum())} positive), "
        f"{len(set(data.folds.tolist()))} patient folds; probe {cfg.model_dump()}, "
        f"balance {balance.model_dump()}",
        flush=True,
    )

    from cad.backbones import get_spec

    features = {b: cached_features(data, b, workdir) for b in args.backbones.split(",")}
    depths = {
        b: dict(zip(get_spec(b).nodes, get_spec(b).node_depths, strict=True)) for b in features
    }
    dims = {b: {node: int(x.shape[1]) for node, x in f.items()} for b, f in features.items()}
    seq_cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"n_jobs": 1})})

    def cad(probe_cfg) -> dict:
        return {
            b: score_nodes(f, depths[b], data.labels, data.folds, probe_cfg, balance)
            for b, f in features.items()
        }

    sides = {
        "cad": lambda: cad(cfg),
        "sklearn": lambda: {
            b: sklearn_loop(f, data.labels, data.folds) for b, f in features.items()
        },
    }
    if not args.no_seq:
        sides["cad_seq"] = lambda: cad(seq_cfg)
        sides["cad_processes"] = lambda: {
            b: score_nodes_processes(f, data.labels, data.folds, cfg, balance)
            for b, f in features.items()
        }
    times, outputs = interleave(sides, args.reps)
    explain: dict[str, dict] = {}
    if not args.no_explain:
        nobal = balance.model_copy(update={"method": "none"})
        explain["sklearn_over"] = {
            b: sklearn_oversampled(f, data.labels, data.folds, balance.seed)
            for b, f in features.items()
        }
        explain["cad_nobal"] = {
            b: {
                s.node: s.f1_mean
                for s in score_nodes(f, depths[b], data.labels, data.folds, seq_cfg, nobal)
            }
            for b, f in features.items()
        }

    solver = solver_for(cfg, int((data.folds != data.folds[0]).sum()))
    per_backbone = {}
    for b in features:
        cad_scores = outputs["cad"][b]
        cad_f1 = {s.node: s.f1_mean for s in cad_scores}
        sk_f1 = outputs["sklearn"][b]
        cad_choice = choose_finetune_node(cad_scores).node
        order = {node: i for i, node in enumerate(get_spec(b).nodes)}
        sk_choice = sorted(sk_f1, key=lambda node: (-round(sk_f1[node], 12), order[node]))[0]
        per_backbone[b] = {
            "dims": dims[b],
            "cad_f1": cad_f1,
            "sklearn_f1": sk_f1,
            "cad_choice": cad_choice,
            "sklearn_choice": sk_choice,
            "same_choice": cad_choice == sk_choice,
            "max_abs_df1": max(abs(cad_f1[k] - sk_f1[k]) for k in cad_f1),
        }
        for label, f1s in explain.items():
            f1 = f1s[b]
            per_backbone[b][f"{label}_f1"] = f1
            per_backbone[b][f"{label}_choice"] = sorted(
                f1, key=lambda node: (-round(f1[node], 12), order[node])
            )[0]
    ratio_best = times["sklearn"].best / times["cad"].best
    ratio_median = times["sklearn"].median / times["cad"].median
    end = loadavg()

    print(
        f"\nsolver chosen by cad for these shapes: {solver} (fold training size "
        f"~{int((data.folds != data.folds[0]).sum())})"
    )
    for side, t in times.items():
        print(f"  {side:<8} best {t.best:7.2f} s  median {t.median:7.2f} s")
    print(f"sklearn/cad: {ratio_best:.2f}x (best), {ratio_median:.2f}x (median)")
    if "cad_seq" in times:
        par = times["cad_seq"].best / times["cad"].best
        solver_gain = times["sklearn"].best / times["cad_seq"].best
        print(
            f"  of which thread parallelism: cad_seq/cad {par:.2f}x; "
            f"solver: sklearn/cad_seq {solver_gain:.2f}x"
        )
    labels = ["cad", "sklearn", *explain]
    for b, r in per_backbone.items():
        print(
            f"\n{b}: chosen node cad {r['cad_choice']}, sklearn {r['sklearn_choice']} "
            f"({'same' if r['same_choice'] else 'DIFFERENT'}); max |dF1| {r['max_abs_df1']:.3f}"
        )
        print(f"  {'node':<18} {'dim':>5}" + "".join(f" {k:>12}" for k in labels))
        for node in r["cad_f1"]:
            print(
                f"  {node:<18} {r['dims'][node]:>5}"
                + "".join(f" {r[f'{k}_f1'][node]:>12.3f}" for k in labels)
            )
        print(f"  {'chosen':<24}" + "".join(f" {r[f'{k}_choice'][-12:]:>12}" for k in labels))
    print(load_note(machine["loadavg_start"], end))
    name = "bench_probe_quick" if args.quick else "bench_probe"
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "threads": threads,
            "config": {
                "pipeline": pipeline.name,
                "overrides": overrides,
                "samples": n,
                "probe": cfg.model_dump(),
                "balance": balance.model_dump(),
                "solver": solver,
                "reps": args.reps,
            },
            "times": {k: v.as_dict() for k, v in times.items()},
            "ratio_best": ratio_best,
            "ratio_median": ratio_median,
            "backbones": per_backbone,
            "loadavg_end": end,
            "under_load": under_load(machine["loadavg_start"]) or under_load(end),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
