"""Does the method work? The paper's ablations on a phantom with known truth.

On a phantom that is not the default run's (its own seed and size, >= 60 patients), for
several split seeds (patient-level splits), every arm below is scored on the same held-out
test patients with the same epochs budget:

| arm | what |
|---|---|
| histogram + LR | intensity histograms and statistics of each channel, logistic regression |
| random init, cad method | random weights, probe -> two nodes -> freeze -> fine-tune |
| pretrained, SVM probe only | cad's offline pretrained weights, the probe's SVM at its best node |
| pretrained, cad method | the method: probe -> two nodes -> freeze -> fine-tune |
| pretrained, fine-tune all | the same nodes and head, nothing frozen |
| from scratch | random weights, nothing frozen, same nodes, head and budget |
| pretrained, twice transfer | round 2 of the method (re-probe, re-freeze, fine-tune again) |

Prints and writes (``results/transfer_validity.json`` and a markdown table) the mean and
spread over seeds of test F1 and ROC AUC, slice- and patient-level, each seed's patient
bootstrap interval, the chance levels, and the nodes each seed chose.

    .venv/bin/python -m benchmarks.transfer_validity [--seeds 0 1 2] [--patients 64]
        [--backbone resnet50] [--quick]   # --quick: a tiny phantom and budget (minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, ROOT, machine_info, write_result

ARMS = {
    "histogram + LR": None,
    "random init, cad method": {"weights": "random"},
    "pretrained, SVM probe only": {"weights": "pretrain", "probe_only": True},
    "pretrained, cad method": {"weights": "pretrain"},
    "pretrained, fine-tune all": {"weights": "pretrain", "set": ["finetune.freeze=false"]},
    "from scratch": {"weights": "random", "set": ["finetune.freeze=false"]},
    "pretrained, twice transfer": {"weights": "pretrain", "set": ["transfer.rounds=2"]},
}
METRICS = ("f1", "roc_auc")


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    phantom = f"{{patients: {args.patients}, slices: 20, size: 128, seed: {args.phantom_seed}, "
    phantom += "lesion_fraction: 0.6}"
    out = [f"data.phantom={phantom}", f"split.seed={seed}", "evaluate.bootstrap=1000"]
    if args.quick:
        out += ["pretrain.steps=20", "finetune.epochs=2", "input.size=64", "split.folds=2"]
        out[0] = out[0].replace(f"patients: {args.patients}", "patients: 16")
        out[0] = out[0].replace("slices: 20", "slices: 12").replace("size: 128", "size: 64")
    return out + list(args.set)


def _interval(rows: dict, name: str) -> dict:
    return {k: round(float(v), 4) for k, v in rows[name].items()}


def _scores(y, prob, groups, threshold: float, n_boot: int) -> dict:
    """Slice- and patient-level F1/AUC with patient-bootstrap intervals, and chance."""
    from cad.evaluate.metrics import bootstrap_metrics, chance_levels, patient_level

    slice_rows = bootstrap_metrics(y, prob, threshold, groups, n_boot)
    py, pp, pg = patient_level(y, prob, groups)
    patient_rows = bootstrap_metrics(py, pp, threshold, pg, n_boot)
    return {
        "slice": {m: _interval(slice_rows, m) for m in METRICS},
        "patient": {m: _interval(patient_rows, m) for m in METRICS},
        "chance": {"slice": chance_levels(y), "patient": chance_levels(py)},
    }


def _labels(samples) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s.label for s in samples]), np.array([s.patient for s in samples])


def histogram_features(images: np.ndarray) -> np.ndarray:
    """Per channel: a 32-bin histogram over [-0.5, 1.5] and 8 percentiles."""
    rows = []
    for img in images:
        feats: list[float] = []
        for channel in img:
            hist, _ = np.histogram(channel, bins=32, range=(-0.5, 1.5))
            feats += list(hist / channel.size)
            feats += list(np.percentile(channel, (1, 5, 25, 50, 75, 95, 99, 99.9)))
        rows.append(feats)
    return np.asarray(rows, np.float32)


def fit_and_score(make, x_train, y_train, x_val, val, x_test, test, n_boot) -> dict:
    """Fit on the training patients, threshold on validation F1, score the test patients."""
    from cad.evaluate.metrics import choose_threshold

    model = make().fit(x_train, y_train)

    def prob(x):
        if hasattr(model, "predict_proba"):
            return model.predict_proba(x)[:, 1]
        return 1 / (1 + np.exp(-model.decision_function(x)))

    threshold = choose_threshold(val[0], prob(x_val))
    return _scores(test[0], prob(x_test), test[1], threshold, n_boot)


def histogram_arm(result, n_boot: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data, splits = result.data, result.data.split.assignment()
    parts = {}
    for name, patients in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        images, samples = data.ingest.subset(patients)
        parts[name] = (histogram_features(images), *_labels(samples))

    def make():
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))

    train, val, test = parts["train"], parts["val"], parts["test"]
    scores = fit_and_score(make, train[0], train[1], val[0], val[1:], test[0], test[1:], n_boot)
    return {**scores, "nodes": None}


def probe_only_arm(result, cfg, n_boot: int) -> dict:
    """The probe's own SVM at its chosen node, trained on the probe's training samples."""
    from cad.backbones import get_spec
    from cad.data.samples import column
    from cad.device import select_runtime
    from cad.features.extract import extract_features
    from cad.finetune.model import Normalize
    from cad.pipeline.stages.layers import load_backbone
    from cad.probe.svm import make_probe

    chain = result.chains[0]
    node = chain.probe.choice().finetune
    spec = get_spec(cfg.backbones[0].name)
    model, _, _ = load_backbone(cfg.backbones[0], cfg.input.in_chans, None, chain.pretrained)
    splits = result.data.split.assignment()
    runtime = select_runtime(cfg.extract.precision)
    normalize = Normalize(spec.mean, spec.std, cfg.input.in_chans)

    def features(images):
        pooling = cfg.extract.pooling
        return extract_features(
            model, [node], images, normalize, runtime, 32, pooling, grid=cfg.extract.grid
        )[node]

    samples = result.data.augment.samples()
    x_train = chain.extract.load()[node]
    y_train = column(samples, "label").astype(int)
    val_images, val_samples = result.data.ingest.subset(splits.val)
    test_images, test_samples = result.data.ingest.subset(splits.test)
    scores = fit_and_score(
        lambda: make_probe(cfg.probe, cfg.balance, len(y_train)),
        x_train,
        y_train,
        features(val_images),
        _labels(val_samples),
        features(test_images),
        _labels(test_samples),
        n_boot,
    )
    return {**scores, "nodes": {"finetune": node, "connection": None}}


def pipeline_arm(summary: dict, round_: int) -> dict:
    (row,) = [r for r in summary["results"] if r["round"] == round_]
    return {
        "slice": {m: row["test"][m] for m in METRICS},
        "patient": {m: row["test_patient"][m] for m in METRICS},
        "chance": {"slice": row["test_chance"], "patient": row["test_patient_chance"]},
        "nodes": row["nodes"],
        "probe_best_f1": row["probe"]["finetune_f1"],
        "probe_chance_all_positive": row["probe"]["chance_f1_all_positive"],
        "weights_source": row["weights_source"],
    }


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, dict]:
    from cad.api import run_pipeline
    from cad.config import load_config

    out: dict[str, dict] = {}
    workdir = root / f"seed{seed}"
    for arm, spec in ARMS.items():
        if args.arms and arm not in args.arms and arm != "histogram + LR":
            continue
        start = time.perf_counter()
        overrides = base_overrides(args, seed)
        weights = "random" if spec is None else spec["weights"]
        overrides.append(f"backbones=[{{name: {args.backbone}, weights: {weights}}}]")
        overrides += [] if spec is None else spec.get("set", [])
        cfg = load_config(ROOT / "pipelines/breast_mri.yaml", overrides)
        result = run_pipeline(cfg, workdir, track=False)
        summary = result.summary.model_dump(mode="json")
        if spec is None:
            out[arm] = histogram_arm(result, 1000)
        elif spec.get("probe_only"):
            out[arm] = probe_only_arm(result, cfg, 1000)
        else:
            out[arm] = pipeline_arm(summary, cfg.transfer.rounds)
        out[arm]["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"seed {seed} {arm}: slice AUC {out[arm]['slice']['roc_auc']['value']:.3f} "
              f"patient AUC {out[arm]['patient']['roc_auc']['value']:.3f}", flush=True)  # fmt: skip
    return out


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _nodes(nodes: dict | None) -> str:
    if nodes is None:
        return "-"
    return nodes["finetune"] + (f" → {nodes['connection']}" if nodes["connection"] else "")


def table(per_seed: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(per_seed)
    head = "| arm | slice F1 | slice ROC AUC | patient F1 | patient ROC AUC | nodes per seed |"
    lines = [head, "|---|---|---|---|---|---|"]
    for arm in ARMS:
        if arm not in per_seed[seeds[0]]:
            continue
        rows = [per_seed[s][arm] for s in seeds]
        cells = [
            _mean_sd([r[level][m]["value"] for r in rows])
            for level in ("slice", "patient")
            for m in METRICS
        ]
        nodes = "; ".join(_nodes(r["nodes"]) for r in rows)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {nodes} |")
    all_pos = [per_seed[s]["histogram + LR"]["chance"]["slice"]["f1_all_positive"] for s in seeds]
    pat = [per_seed[s]["histogram + LR"]["chance"]["patient"]["f1_all_positive"] for s in seeds]
    lines.append(
        f"| chance | {_mean_sd(all_pos)} (all positive) | 0.5 | {_mean_sd(pat)} "
        "(all positive) | 0.5 | |"
    )
    return "\n".join(lines)


def targets(per_seed: dict[int, dict[str, dict]]) -> str:
    """The issue's targets, met or missed by how much: the method's slice ROC AUC >= 0.85 and
    above every arm but full fine-tuning; the probe's best node >= 0.2 F1 above chance."""
    seeds = sorted(per_seed)
    method = "pretrained, cad method"
    if method not in per_seed[seeds[0]]:
        return ""

    def mean_auc(arm: str) -> float:
        return statistics.mean(per_seed[s][arm]["slice"]["roc_auc"]["value"] for s in seeds)

    auc = mean_auc(method)
    others = {
        arm: mean_auc(arm)
        for arm in per_seed[seeds[0]]
        if arm not in (method, "pretrained, fine-tune all")
    }
    rival, rival_auc = max(others.items(), key=lambda kv: kv[1])
    margins = [
        per_seed[s][method]["probe_best_f1"] - per_seed[s][method]["probe_chance_all_positive"]
        for s in seeds
    ]
    margin = statistics.mean(margins)

    def verdict(ok: bool, by: float) -> str:
        return "met" if ok else f"missed by {abs(by):.3f}"

    return "\n".join(
        [
            f"- method slice ROC AUC {auc:.3f} >= 0.85: {verdict(auc >= 0.85, 0.85 - auc)}",
            f"- above every other arm but full fine-tuning (best other: {rival}, "
            f"{rival_auc:.3f}): {verdict(auc > rival_auc, rival_auc - auc)}",
            f"- probe best node F1 - chance (all positive) {margin:.3f} >= 0.2 "
            f"(per seed {', '.join(f'{m:.3f}' for m in margins)}): "
            f"{verdict(margin >= 0.2, 0.2 - margin)}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--phantom-seed", type=int, default=101)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arms", nargs="+", default=[], help="only these arms (and the baseline)")
    parser.add_argument("--name", default=None, help="result file name (default by --quick)")
    parser.add_argument("--from-json", type=Path, default=None, help="re-print a saved result")
    args = parser.parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        per_seed = {int(k): v for k, v in saved["per_seed"].items()}
        text = table(per_seed) + "\n\n" + targets(per_seed)
        print(text)
        args.from_json.with_suffix(".md").write_text(text + "\n")
        return
    if args.patients < 60 and not args.quick:
        parser.error("--patients: at least 60 (the validity bar); use --quick for a smoke run")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="cad-validity-"))
    machine = machine_info()
    start = time.perf_counter()
    per_seed = {seed: run_seed(args, seed, root) for seed in args.seeds}
    text = table(per_seed) + "\n\n" + targets(per_seed)
    print(text)
    name = args.name or ("transfer_validity_quick" if args.quick else "transfer_validity")
    write_result(
        name,
        {
            "machine": machine,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "wall_s": round(time.perf_counter() - start, 1),
            "per_seed": per_seed,
            "table": text,
        },
    )
    (RESULTS / f"{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
