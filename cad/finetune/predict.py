"""Inference with a transfer model: positive-class probabilities from a frozen copy.

``evaluate``, the fine-tuning threshold choice and ``cad score`` all call this, so a slice
gets the same probability wherever it is scored. The copy (:mod:`cad.frozen`: BatchNorm
folded, bf16 weights cast once) is built once per :class:`Predictor`; scoring keeps one
for the whole run.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cad.device import Runtime
from cad.finetune.model import FEATURES_KEY, TransferModel
from cad.frozen import Select, frozen_inference_copy


class Predictor:
    """``predictor(images)``: (N,) positive-class probabilities for (N, C, H, W) images."""

    def __init__(self, model: TransferModel, runtime: Runtime, batch_size: int = 64) -> None:
        self.module, needs_autocast = frozen_inference_copy(
            model.normalize, model.body, runtime, Select(FEATURES_KEY), model.head
        )
        self.runtime = runtime
        self.batch_size = batch_size
        self._autocast = runtime.autocast if needs_autocast else contextlib.nullcontext

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        logits = []
        for start in range(0, len(data), self.batch_size):
            with self._autocast():
                batch = self.runtime.batch(data[start : start + self.batch_size])
                logits.append(self.module(batch).float())
        if not logits:
            return np.zeros(0, np.float32)
        return torch.softmax(torch.cat(logits), dim=1)[:, 1].cpu().numpy()


def predict_proba(
    model: TransferModel, images: np.ndarray, runtime: Runtime, batch: int = 64
) -> np.ndarray:
    """Positive-class probabilities for (N, C, H, W) images (evaluate, threshold choice)."""
    return Predictor(model, runtime, batch)(images)
