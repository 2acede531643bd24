"""One rank of the data-parallel unit test: ``python ddp_worker.py OUT [NETWORK]`` under
the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), or with none of it for the one-process reference. NETWORK: ``lenet5`` (no
BatchNorm) or ``batchnorm`` (a ResNet block with trainable BatchNorm).

The data are chosen so that the ranks hold unequal rows everywhere: 9 training samples
(one resampled twice) at batch 4 (the last global batch has one sample, so rank 1's part
of it is empty), 3 validation images (2 and 1), and a gather where rank 1 holds nothing.
Writes ``OUT/rank<R>.json`` (what this rank saw) and, on rank 0, the final and initial
states.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cad.backbones import create_backbone, get_spec
from cad.config import AugmentConfig, FinetuneConfig
from cad.device import select_runtime
from cad.distributed import joined, state_digest
from cad.finetune.model import build_transfer_model
from cad.finetune.train import train


def main(out: Path, network: str) -> None:
    torch.manual_seed(0)
    if network == "batchnorm":  # trainable BatchNorm: per-rank statistics on the CPU
        import torchvision

        backbone, nodes, spec = torchvision.models.resnet18(), ("layer1", "layer2"), None
    else:
        backbone = create_backbone("lenet5", weights="random", in_chans=3).model
        nodes, spec = ("s2", "c5.act"), get_spec("lenet5")
    mean, std = (spec.mean, spec.std) if spec else ((0.5,), (0.5,))
    model = build_transfer_model(
        backbone, *nodes, mean=mean, std=std, in_chans=3, size=32, hidden=8, dropout=0.0
    )
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 32, 32), dtype=np.float32)
    y = (np.arange(12) % 2).astype(np.int64)
    x[y == 1, :, 8:20, 8:20] += 1.0
    cfg = FinetuneConfig(
        epochs=3, batch_size=4, lr=1e-2, precision="fp32", hidden=8, dropout=0.0, patience=5,
        loss="weighted", channels_last=False,
    )  # fmt: skip
    initial = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    with joined("auto", wait_s=600) as world:
        empty = torch.zeros((0, 2)) if world.rank else torch.arange(6.0).view(3, 2)
        gathered = world.gather_rows(empty)
        result = train(
            model, x[:9], y[:9], np.array([0, 1, 2, 3, 4, 5, 6, 7, 1]), x[9:], y[9:], cfg,
            AugmentConfig(mode="offline", copies=0), select_runtime("fp32", False), world=world,
        )  # fmt: skip
        seen = {
            "rank": world.rank,
            "ranks": world.size,
            "gathered": gathered.tolist(),
            "history": result.history,
            "weights_sha256": result.weights_sha256,
            "has_val_prob": result.val_prob is not None,
            "digest": state_digest(model),
            "frozen": sorted(model.frozen_parameters()),
        }
        (out / f"rank{world.rank}.json").write_text(json.dumps(seen))
        if world.is_writer:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(out / "state.safetensors"))
            save_file(initial, str(out / "initial.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "lenet5")
