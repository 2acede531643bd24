"""Data stages: phantom -> manifest -> ingest -> split -> balance/augment.

Each function computes one artifact's files into ``out`` and returns its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cad.config import PipelineConfig
from cad.data.augment import augment_offline
from cad.data.balance import resample_indices
from cad.data.ingest import run_ingest
from cad.data.manifest import ManifestRow, build_from_boxes, read_manifest, write_manifest
from cad.data.samples import Sample, column, read_samples, write_samples
from cad.data.splits import assign_folds, check_disjoint, split_patients
from cad.log import progress
from cad.pipeline.store import Artifact


def phantom_stage(out: Path, cfg: PipelineConfig) -> dict:
    from cad.data.phantom import generate_phantom

    p = cfg.data.phantom
    with progress("phantom", p.patients, "patients") as advance:
        info = generate_phantom(
            out,
            patients=p.patients,
            slices=p.slices,
            size=p.size,
            seed=p.seed,
            lesion_fraction=p.lesion_fraction,
            progress=lambda done, total: advance(1),
        )
    return {"items": info.files, "patients": info.patients, "lesion_patients": info.lesion_patients}


def phantom_manifest_stage(out: Path, phantom: Artifact, margin: int) -> dict:
    rows = build_from_boxes(
        phantom.path / "dicom",
        phantom.path / "Annotation_Boxes.csv",
        margin=margin,
        unboxed="negative",
    )
    write_manifest(rows, out / "manifest.csv")
    return {"items": len(rows), "positives": sum(r.label for r in rows)}


def ingest_stage(out: Path, manifest: Path, root: Path, cfg: PipelineConfig, secret: bytes) -> dict:
    rows: list[ManifestRow] = read_manifest(manifest)
    folders = len({(r.path, r.series) for r in rows})
    with progress("ingest", folders, "studies") as advance:
        return run_ingest(out, root, rows, cfg.input, secret, workers=2, progress=advance)


def split_stage(out: Path, ingest: Artifact, cfg: PipelineConfig) -> dict:
    samples = read_samples(ingest.file("samples.csv"))
    patients, labels = column(samples, "patient"), column(samples, "label")
    splits = split_patients(patients, labels, cfg.split)
    check_disjoint(splits)
    train = set(splits["train"])
    mask = np.array([p in train for p in patients])
    folds = assign_folds(patients[mask], labels[mask], cfg.split.folds, cfg.split.seed)
    sizes = {
        name: {
            "patients": len(keys),
            "samples": int(np.isin(patients, keys).sum()),
            "positives": int(labels[np.isin(patients, keys)].sum()),
        }
        for name, keys in splits.items()
    }
    (out / "splits.json").write_text(
        json.dumps({**splits, "folds": folds, "sizes": sizes}, indent=1)
    )
    return {"items": len(samples), "sizes": sizes}


def split_indices(ingest: Artifact, split: Artifact, name: str) -> np.ndarray:
    """Row indices of ``images.npy`` that belong to split ``name``."""
    samples = read_samples(ingest.file("samples.csv"))
    keys = set(split.read_json("splits.json")[name])
    return np.array([i for i, s in enumerate(samples) if s.patient in keys], dtype=np.int64)


def augment_stage(out: Path, ingest: Artifact, split: Artifact, cfg: PipelineConfig) -> dict:
    """Training split only: offline augmented copies, then resampled training order."""
    samples = read_samples(ingest.file("samples.csv"))
    images = np.load(ingest.file("images.npy"), mmap_mode="r")
    train_idx = split_indices(ingest, split, "train")
    originals = np.asarray(images[train_idx])
    copies = cfg.augment.copies if cfg.augment.mode == "offline" else 0
    with progress("augment", len(train_idx) * copies, "slices") as advance:
        augmented, source = augment_offline(originals, cfg.augment, progress=advance)
    np.save(out / "train_images.npy", augmented)
    train_samples = [samples[train_idx[i]] for i in source]
    write_samples(
        [
            Sample(
                f"{s.sample}#{k // len(train_idx)}", s.patient, s.study, s.series, s.slice, s.label
            )
            for k, s in enumerate(train_samples)
        ],
        out / "train_samples.csv",
    )
    labels = column(train_samples, "label").astype(np.int64)
    order = resample_indices(labels, cfg.balance)
    np.save(out / "order.npy", order)
    return {
        "items": len(augmented),
        "originals": len(train_idx),
        "resampled": len(order),
        "positives_before": int(labels.sum()),
        "positives_after": int(labels[order].sum()),
    }


def _psnr(clean: np.ndarray, other: np.ndarray) -> float:
    mse = float(np.mean((clean - other) ** 2))
    peak = float(clean.max() - clean.min()) or 1.0
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


def denoise_stage(out: Path, ingest: Artifact, split: Artifact, cfg: PipelineConfig) -> dict:
    """Train DnCNN on the training patients' slices, measure it on validation slices with
    synthetic noise, and denoise every slice (train, val and test alike)."""
    import shutil

    from safetensors.torch import save_model

    from cad.backbones.dncnn import denoise, train_dncnn

    d = cfg.denoise
    images = np.load(ingest.file("images.npy"), mmap_mode="r")
    train = np.asarray(images[split_indices(ingest, split, "train")])
    val = np.asarray(images[split_indices(ingest, split, "val")])
    model = train_dncnn(
        train, d.sigma, d.epochs, d.batch_size, d.seed, depth=d.depth, features=d.features
    )
    noisy = val + np.random.default_rng(d.seed).normal(0, d.sigma, val.shape).astype(np.float32)
    restored = denoise(model, noisy)
    result = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.float32, shape=images.shape
    )
    for start in range(0, len(images), 256):
        result[start : start + 256] = denoise(model, np.asarray(images[start : start + 256]))
    result.flush()
    change = float(np.mean(np.abs(np.asarray(result) - np.asarray(images))))
    shutil.copy(ingest.file("samples.csv"), out / "samples.csv")
    save_model(model, str(out / "dncnn.safetensors"))
    spec = {
        "in_chans": int(images.shape[1]),
        "depth": d.depth,
        "features": d.features,
        "sigma": d.sigma,
    }
    metrics = {
        "val_psnr_noisy_db": _psnr(val, noisy),
        "val_psnr_denoised_db": _psnr(val, restored),
        "mean_abs_change_real": change,
        **spec,
    }
    metrics["val_psnr_gain_db"] = metrics["val_psnr_denoised_db"] - metrics["val_psnr_noisy_db"]
    (out / "dncnn.json").write_text(json.dumps(spec, indent=1))
    (out / "denoise_metrics.json").write_text(json.dumps(metrics, indent=1))
    return {
        "items": len(images),
        **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
    }
