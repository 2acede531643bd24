"""Preparing the training data: optional DnCNN denoising, then augmentation and resampling.

Both read the training patients' slices only (``Splits``); denoising then applies the
trained DnCNN to every slice so that validation and test see the same preprocessing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cad.artifacts.images import DenoisedImages, ImageSet, TrainingSet
from cad.artifacts.splits import Splits
from cad.config import AugmentConfig, BalanceConfig, DenoiseConfig
from cad.data.samples import Sample, column
from cad.log import progress
from cad.pipeline.stage import Settings, Stage, StageContext


class DenoiseSettings(Settings):
    denoise: DenoiseConfig


def _psnr(clean: np.ndarray, other: np.ndarray) -> float:
    mse = float(np.mean((clean - other) ** 2))
    peak = float(clean.max() - clean.min()) or 1.0
    return float(10 * np.log10(peak**2 / max(mse, 1e-12)))


class DenoiseStage(Stage[DenoiseSettings]):
    name = "denoise"
    summary = (
        "optional DnCNN trained on training slices with synthetic noise; every slice "
        "denoised; validation PSNR reported; the DnCNN ships in the model package"
    )
    settings_type = DenoiseSettings
    inputs = {"images": ImageSet, "splits": Splits}
    output = DenoisedImages

    def run(
        self, ctx: StageContext, settings: DenoiseSettings, images: ImageSet, splits: Splits
    ) -> dict[str, Any]:
        import shutil

        from safetensors.torch import save_model

        from cad.backbones.dncnn import denoise, train_dncnn

        d = settings.denoise
        assignment = splits.assignment()
        train, _ = images.subset(assignment.train)
        val, _ = images.subset(assignment.val)
        model = train_dncnn(
            train, d.sigma, d.epochs, d.batch_size, d.seed, depth=d.depth, features=d.features
        )
        rng = np.random.default_rng(d.seed)
        noisy = val + rng.normal(0, d.sigma, val.shape).astype(np.float32)
        restored = denoise(model, noisy)
        source = images.images()
        out_images, out_samples, _ = DenoisedImages.files_in(ctx.out)
        result = np.lib.format.open_memmap(
            out_images, mode="w+", dtype=np.float32, shape=source.shape
        )
        change = 0.0
        for start in range(0, len(source), 256):
            block = np.asarray(source[start : start + 256])
            result[start : start + 256] = denoise(model, block)
            change += float(np.abs(result[start : start + 256] - block).sum())
        result.flush()
        shutil.copy(images.path / ImageSet.SAMPLES, out_samples)
        save_model(model, str(ctx.out / DenoisedImages.DENOISER))
        spec = {"in_chans": int(source.shape[1]), "depth": d.depth, "features": d.features}
        metrics = {
            "val_psnr_noisy_db": _psnr(val, noisy),
            "val_psnr_denoised_db": _psnr(val, restored),
            "mean_abs_change_real": change / max(source.size, 1),
        }
        metrics["val_psnr_gain_db"] = metrics["val_psnr_denoised_db"] - metrics["val_psnr_noisy_db"]
        return {
            "items": len(source),
            "input": images.meta["input"],
            "denoiser": {**spec, "sigma": d.sigma},
            "denoise_metrics": {k: round(v, 4) for k, v in metrics.items()},
        }


class AugmentSettings(Settings):
    augment: AugmentConfig
    balance: BalanceConfig


class AugmentStage(Stage[AugmentSettings]):
    name = "augment"
    summary = (
        "training split only: MONAI augmentation (offline copies as in the paper, or "
        "online) and imbalanced-learn resampling"
    )
    settings_type = AugmentSettings
    inputs = {"images": ImageSet, "splits": Splits}
    output = TrainingSet

    def run(
        self, ctx: StageContext, settings: AugmentSettings, images: ImageSet, splits: Splits
    ) -> dict[str, Any]:
        from cad.data.augment import augment_offline
        from cad.data.balance import resample_indices

        cfg = settings.augment
        originals, samples = images.subset(splits.assignment().train)
        copies = cfg.copies if cfg.mode == "offline" else 0
        with progress("augment", len(originals) * copies, "slices") as advance:
            augmented, source = augment_offline(originals, cfg, progress=advance)
        train_samples = [
            Sample(
                f"{s.sample}#{k // len(originals)}", s.patient, s.study, s.series, s.slice, s.label
            )
            for k, s in enumerate(samples[i] for i in source)
        ]
        labels = column(train_samples, "label").astype(np.int64)
        order = resample_indices(labels, settings.balance)
        TrainingSet.write(ctx.out, augmented, train_samples, order)
        return {
            "items": len(augmented),
            "originals": len(originals),
            "resampled": len(order),
            "positives_before": int(labels.sum()),
            "positives_after": int(labels[order].sum()),
            "input": images.meta["input"],
            "augment": cfg.model_dump(mode="json"),
        }
