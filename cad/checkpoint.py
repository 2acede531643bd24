"""Training checkpoints that a kill -9 cannot tear: one safetensors file per save.

Model and optimizer tensors (and any extra tensors, e.g. RNG states) are the file's tensors;
everything else (step, history, the optimizer's param groups) is JSON in the file's
metadata, so a checkpoint is replaced by one ``os.replace`` and is never half new. No pickle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger("cad")
_META = "cad_state"


class Checkpoint:
    """``directory/last.safetensors``; a None directory makes save and load no-ops."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / "last.safetensors"

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if self.directory is None or self.path is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        opt = optimizer.state_dict()
        for index, slots in opt["state"].items():
            for name, value in slots.items():
                tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        for name, value in (extra or {}).items():
            tensors[f"extra.{name}"] = value.detach().cpu().contiguous()
        meta = {**state, "param_groups": opt["param_groups"]}
        tmp = self.directory / f".ckpt-{os.getpid()}.safetensors"
        save_file(tensors, str(tmp), metadata={_META: json.dumps(meta)})
        os.replace(tmp, self.path)

    def load(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """(state, extra tensors) after restoring model and optimizer; None when there is no
        usable checkpoint (absent, unreadable, or made for another model)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})[_META])
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            log.warning("checkpoint %s is not usable (%s); starting afresh", self.path.name, exc)
            return None
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
        extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        return meta, extra
