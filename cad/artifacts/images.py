"""Decoded slices: the ingest output, its denoised copy, and the augmented training set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cad.artifacts.base import Artifact
from cad.config import AugmentConfig, InputConfig
from cad.data.samples import Sample, column, read_samples, write_samples


class ImageSet(Artifact):
    """``images.npy`` (N, C, H, W) float32 with one pseudonymous ``samples.csv`` row per
    slice, the input spec they were made with, and one typed outcome per input file."""

    kind = "images"
    IMAGES = "images.npy"
    SAMPLES = "samples.csv"
    REPORT = "ingest_report.csv"

    def images(self) -> np.ndarray:
        return np.load(self.path / self.IMAGES, mmap_mode="r")

    def samples(self) -> list[Sample]:
        return read_samples(self.path / self.SAMPLES)

    @property
    def spec(self) -> InputConfig:
        return InputConfig.model_validate(self.meta["input"])

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    def subset(self, patients: set[str] | list[str]) -> tuple[np.ndarray, list[Sample]]:
        """(images, samples) of ``patients``' slices, in row order."""
        keys = set(patients)
        samples = self.samples()
        idx = np.array([i for i, s in enumerate(samples) if s.patient in keys], dtype=np.int64)
        return np.asarray(self.images()[idx]), [samples[i] for i in idx]

    @classmethod
    def files_in(cls, out: Path) -> tuple[Path, Path, Path]:
        """Where a stage writes (images, samples, report) inside its output directory."""
        return out / cls.IMAGES, out / cls.SAMPLES, out / cls.REPORT


class DenoisedImages(ImageSet):
    """An ImageSet passed through a DnCNN trained on the training patients' slices."""

    kind = "denoised-images"
    DENOISER = "dncnn.safetensors"

    @property
    def denoiser(self) -> Path:
        return self.path / self.DENOISER

    @property
    def denoiser_spec(self) -> dict[str, Any]:
        return dict(self.meta["denoiser"])

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta["denoise_metrics"])


class TrainingSet(Artifact):
    """The training split after augmentation: images (originals + offline copies), their
    samples, the resampled training order, and how online augmentation must run."""

    kind = "training-set"
    IMAGES = "train_images.npy"
    SAMPLES = "train_samples.csv"
    ORDER = "order.npy"

    def images(self) -> np.ndarray:
        return np.load(self.path / self.IMAGES, mmap_mode="r")

    def samples(self) -> list[Sample]:
        return read_samples(self.path / self.SAMPLES)

    def labels(self) -> np.ndarray:
        return column(self.samples(), "label").astype(np.int64)

    def order(self) -> np.ndarray:
        return np.load(self.path / self.ORDER)

    @property
    def spec(self) -> InputConfig:
        return InputConfig.model_validate(self.meta["input"])

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig.model_validate(self.meta["augment"])

    @classmethod
    def write(cls, out: Path, images: np.ndarray, samples: list[Sample], order: np.ndarray) -> None:
        np.save(out / cls.IMAGES, images)
        write_samples(samples, out / cls.SAMPLES)
        np.save(out / cls.ORDER, order)
