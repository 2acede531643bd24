"""How hard is the phantom? A histogram-feature baseline that should stay weak.

Generates the default phantom in memory, labels slices as the pipeline does (positive
inside the box's slice range, negative at least ``margin`` slices away, the slices between
excluded, every slice of a lesion-free patient negative), describes each slice by
intensity histograms and statistics of pre, post1 and post1-pre (normalised by the pre
series' 1st/99th percentiles) and scores StandardScaler + LogisticRegression with
patient-grouped 5-fold CV. A phantom where this baseline does well would let a CNN learn
"bright slice" instead of "lesion".

    .venv/bin/python -m benchmarks.phantom_baseline [--png montage.png] [--time-write]
        [--cnn-patients 80]   # and check that a small CNN does learn the lesions
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cad.data.phantom import generate_phantom
from cad.data.phantom_anatomy import TISSUES, SimulatedPatient, lesion_flags, simulate_patient

RESULTS = Path(__file__).resolve().parent / "results" / "phantom_baseline.json"
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 99.9)
_RANGES = {"pre": (-0.25, 2.5), "post1": (-0.25, 4.0), "sub": (-1.0, 3.0)}


def slice_labels(patient: SimulatedPatient, slices: int, margin: int) -> np.ndarray:
    """1 inside the box's slices, 0 at least ``margin`` slices away, -1 excluded."""
    labels = np.zeros(slices, np.int8)
    if patient.box is None:
        return labels
    s = np.arange(1, slices + 1)
    start, end = patient.box.start_slice, patient.box.end_slice
    labels[(s > start - margin) & (s < end + margin)] = -1
    labels[(s >= start) & (s <= end)] = 1
    return labels


def slice_features(patient: SimulatedPatient) -> np.ndarray:
    """(slices, n_features): 32-bin histograms and statistics of pre, post1, post1-pre."""
    pre, post1 = patient.real("pre"), patient.real("post1")
    lo, hi = np.percentile(pre, (1, 99))
    images = {"pre": (pre - lo) / (hi - lo), "post1": (post1 - lo) / (hi - lo)}
    images["sub"] = images["post1"] - images["pre"]
    rows = []
    for k in range(pre.shape[0]):
        feats: list[float] = []
        for name, (a, b) in _RANGES.items():
            img = images[name][k].ravel()
            hist, _ = np.histogram(np.clip(img, a, b), bins=32, range=(a, b))
            feats.extend(hist / img.size)
            feats.extend([img.mean(), img.std(), *np.percentile(img, _PERCENTILES)])
        rows.append(feats)
    return np.asarray(rows, np.float64)


def evaluate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Patient-grouped 5-fold CV of StandardScaler + LogisticRegression."""
    aucs, f1s = [], []
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")
        )
        model.fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
        f1s.append(f1_score(y[test], model.predict(x[test])))
    return {
        "roc_auc_mean": float(np.mean(aucs)),
        "roc_auc_std": float(np.std(aucs)),
        "f1_mean": float(np.mean(f1s)),
        "f1_std": float(np.std(f1s)),
        "roc_auc_folds": [float(a) for a in aucs],
    }


def single_statistics(x: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, float]:
    """ROC AUC of a few single intensity statistics used directly as scores."""
    return {
        n: float(roc_auc_score(y, x[:, names.index(n)]))
        for n in ("sub_p99", "sub_p99.9", "sub_std", "post1_p99.9", "sub_mean")
    }


def feature_names() -> list[str]:
    names = []
    for name in _RANGES:
        names += [f"{name}_h{i}" for i in range(32)] + [f"{name}_mean", f"{name}_std"]
        names += [f"{name}_p{p}" for p in _PERCENTILES]
    return names


def cnn_check(patients: list[SimulatedPatient], slices: int, margin: int, epochs: int) -> dict:
    """Is the lesion learnable? A small CNN trained from scratch on pre/post1/sub slices.

    Three in four patients train, the rest test (patient-disjoint); the input is what the
    pipeline feeds a backbone by default, resized to 96 px.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    xs, ys, gs = [], [], []
    for p in patients:
        pre, post1 = p.real("pre"), p.real("post1")
        lo, hi = np.percentile(pre, (1, 99))
        img = (np.stack([pre, post1, post1 - pre], 1) / (hi - lo)).astype(np.float32)
        img[:, :2] -= lo / (hi - lo)
        labels = slice_labels(p, slices, margin)
        keep = labels >= 0
        xs.append(img[keep]), ys.append(labels[keep]), gs.append(np.full(keep.sum(), p.index))
    x = F.interpolate(torch.tensor(np.concatenate(xs)), size=96, mode="bilinear")
    y, groups = np.concatenate(ys), np.concatenate(gs)
    test_ids = np.random.default_rng(0).permutation(len(patients))[: len(patients) // 4]
    test = np.isin(groups, test_ids)
    train, test = np.flatnonzero(~test), np.flatnonzero(test)
    layers, c = [], 3
    for width in (16, 32, 48, 64):
        for _ in range(2):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        layers.append(nn.MaxPool2d(2))
    model = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, 1))
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-3)
    steps = epochs * -(-len(train) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    pos_weight = torch.tensor((y[train] == 0).sum() / max((y[train] == 1).sum(), 1))
    target = torch.tensor(y, dtype=torch.float32)
    for epoch in range(epochs):
        model.train()
        for b in np.array_split(np.random.default_rng(epoch).permutation(train), steps // epochs):
            batch = x[b].flip(3) if epoch % 2 else x[b]
            loss = F.binary_cross_entropy_with_logits(
                model(batch).squeeze(1), target[b], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        score = torch.cat([model(x[b]).squeeze(1) for b in np.array_split(test, 8)]).numpy()
    return {
        "cnn_patients": len(patients),
        "cnn_epochs": epochs,
        "cnn_test_roc_auc": float(roc_auc_score(y[test], score)),
        "cnn_test_f1": float(f1_score(y[test], score > 0)),
    }


def montage(patients: list[SimulatedPatient], path: Path) -> None:
    """pre / post1 / post1-pre of a lesion slice and of a vessel-rich lesion-free slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lesion = next(p for p in patients if p.box is not None)
    k_lesion = (lesion.box.start_slice + lesion.box.end_slice) // 2 - 1
    clean = [p for p in patients if p.box is None]
    vessel = TISSUES.index("vessel")
    counts = [
        (int((p.tissue[k] == vessel).sum()), i, k)
        for i, p in enumerate(clean)
        for k in range(p.tissue.shape[0])
    ]
    _, i, k_vessel = max(counts)
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    for row, (p, k, what) in zip(
        axes,
        [(lesion, k_lesion, "lesion"), (clean[i], k_vessel, "vessels, no lesion")],
        strict=True,
    ):
        pre, post1 = p.real("pre")[k], p.real("post1")[k]
        hi = np.percentile(p.real("pre"), 99)
        for ax, img, title, vmax in zip(
            row,
            (pre, post1, post1 - pre),
            ("pre", "post1", "post1 - pre"),
            (hi, 2 * hi, hi),
            strict=True,
        ):
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{what}: {title} (slice {k + 1})", fontsize=8)
            ax.axis("off")
        if p.box is not None:
            b = p.box
            row[2].add_patch(
                plt.Rectangle(
                    (b.start_col - 1.5, b.start_row - 1.5),
                    b.end_col - b.start_col + 1,
                    b.end_row - b.start_row + 1,
                    fill=False,
                    ec="r",
                )
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=36)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lesion-fraction", type=float, default=0.6)
    parser.add_argument("--margin", type=int, default=5)
    parser.add_argument("--png", type=Path, help="write a pre/post1/sub montage here")
    parser.add_argument(
        "--time-write",
        action="store_true",
        help="also time generate_phantom writing DICOM to a temporary dir",
    )
    parser.add_argument(
        "--cnn-patients",
        type=int,
        default=0,
        help="also train a small CNN on this many patients (e.g. 80)",
    )
    parser.add_argument("--cnn-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    t0 = time.perf_counter()
    flags = lesion_flags(args.patients, args.lesion_fraction, args.seed)
    patients = [
        simulate_patient(i, args.slices, args.size, args.seed, f) for i, f in enumerate(flags)
    ]
    simulate_s = time.perf_counter() - t0
    xs, ys, gs = [], [], []
    for p in patients:
        labels = slice_labels(p, args.slices, args.margin)
        keep = labels >= 0
        xs.append(slice_features(p)[keep])
        ys.append(labels[keep])
        gs.append(np.full(int(keep.sum()), p.index))
    x, y, groups = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    result = {
        "phantom": {
            "patients": args.patients,
            "slices": args.slices,
            "size": args.size,
            "seed": args.seed,
            "lesion_fraction": args.lesion_fraction,
        },
        "margin": args.margin,
        "n_slices": int(len(y)),
        "n_positive": int(y.sum()),
        "positive_rate": float(y.mean()),
        "simulate_seconds": round(simulate_s, 2),
        **evaluate(x, y, groups, args.seed),
        "single_statistic_auc": single_statistics(x, y, feature_names()),
    }
    if args.time_write:
        tmp = Path(tempfile.mkdtemp(prefix="phantom-"))
        try:
            t0 = time.perf_counter()
            info = generate_phantom(
                tmp, args.patients, args.slices, args.size, args.seed, args.lesion_fraction
            )
            result["write_seconds"] = round(time.perf_counter() - t0, 2)
            result["files"] = info.files
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"slices {result['n_slices']}  positive rate {result['positive_rate']:.3f}")
    print(
        f"ROC AUC {result['roc_auc_mean']:.3f} +- {result['roc_auc_std']:.3f}   "
        f"F1 {result['f1_mean']:.3f} +- {result['f1_std']:.3f}"
    )
    print(
        "single-statistic AUC: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["single_statistic_auc"].items())
    )
    if args.cnn_patients:
        flags = lesion_flags(args.cnn_patients, args.lesion_fraction, args.seed)
        cohort = [
            simulate_patient(i, args.slices, args.size, args.seed, f) for i, f in enumerate(flags)
        ]
        result.update(cnn_check(cohort, args.slices, args.margin, args.cnn_epochs))
        print(
            f"CNN (held-out patients) ROC AUC {result['cnn_test_roc_auc']:.3f}  "
            f"F1 {result['cnn_test_f1']:.3f}"
        )
    if "write_seconds" in result:
        print(f"generate_phantom: {result['files']} files in {result['write_seconds']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.png:
        montage(patients, args.png)


if __name__ == "__main__":
    main()
