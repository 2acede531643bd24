"""Building a backbone with ImageNet, random or local-file weights, and describing it.

Nothing here downloads: ImageNet weights are read from the caches torchvision and timm
use (``torch.hub.get_dir()/checkpoints`` and the Hugging Face hub cache). When the file
is absent the error names the exact file and folder, before any work is done.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.feature_extraction import create_feature_extractor

from cad.backbones._adapt import adapt_state_dict
from cad.backbones.registry import BackboneSpec, get_spec
from cad.errors import CadError, WeightsError, did_you_mean, look_up_option

WEIGHT_CHOICES = ("imagenet", "pretrain", "random")
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_OR_RANDOM = "or set fallback: pretrain (cad's offline pretrained weights) or weights: random"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for, in order
# legacy torchvision DenseNet keys: 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class LoadedBackbone:
    """A built backbone (in eval mode) and where its weights came from.

    ``weights_source`` is ``imagenet:<enum or hub id>``, ``random``, ``file:<basename>``
    or ``random (fallback: ...)``; ``message`` is one line for logs and run tags.
    """

    model: nn.Module
    spec: BackboneSpec
    weights_source: str
    fell_back: bool
    message: str


@dataclass(frozen=True)
class WeightsLocation:
    """Where a spec's pretrained weights are looked for; ``path`` is set when present."""

    file_name: str
    folder: Path
    url: str
    path: Path | None

    @property
    def cached(self) -> bool:
        return self.path is not None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def weights_location(spec: BackboneSpec) -> WeightsLocation | None:
    """Where ``spec.weights`` live in the local cache; None if the spec has no weights."""
    if spec.weights is None:
        return None
    if spec.source == "torchvision":
        url = torchvision.models.get_weight(spec.weights).url
        name = os.path.basename(urlparse(url).path)
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        path = folder / name
        return WeightsLocation(name, folder, url, path if path.is_file() else None)
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    repo_dir = cache / f"models--{spec.weights.replace('/', '--')}"
    for name in _HF_FILES:
        found = try_to_load_from_cache(spec.weights, name, cache_dir=cache)
        if isinstance(found, str) and os.path.isfile(found):
            return WeightsLocation(name, Path(found).parent, _hf_url(spec, name), Path(found))
    name = _HF_FILES[0]
    return WeightsLocation(name, repo_dir / "snapshots" / "<commit>", _hf_url(spec, name), None)


def _hf_url(spec: BackboneSpec, file_name: str) -> str:
    return f"https://huggingface.co/{spec.weights}/resolve/main/{file_name}"


def _missing_message(spec: BackboneSpec, loc: WeightsLocation) -> str:
    head = f"ImageNet weights for {spec.name} not found: put {loc.file_name} into {loc.folder}/"
    if spec.source == "torchvision":
        return f"{head} (download it from {loc.url} on a machine with internet), " + _OR_RANDOM
    repo_dir = loc.folder.parent.parent
    return (
        f"{head} and the commit name into {repo_dir / 'refs' / 'main'} (easiest: run "
        f"'hf download {spec.weights}' on a machine with internet and copy {repo_dir}/ "
        f"here; the file is {loc.url}), pass the file itself as weights: <path>, " + _OR_RANDOM
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pt/.pth file (``weights_only``; no pickled code)."""
    if path.suffix not in _FILE_SUFFIXES:
        raise WeightsError(f"unsupported weights file {path.name}: use {', '.join(_FILE_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or pickled objects refused by weights_only
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def _few(keys: list[str], n: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> list[str]:
    """Load ``state`` strictly, adapting the stem conv to the model's channels.

    Returns the keys whose input channels were adapted.
    """
    target = model.state_dict()
    state, adapted = adapt_state_dict(state, target)
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    problems = [
        f"{len(keys)} {label} ({_few(keys)})"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys with another shape (file vs model)", reshaped),
        )
        if keys
    ]
    if problems:
        raise WeightsError(f"{what} do not fit the network: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return adapted


class _Resolved(NamedTuple):
    path: Path | None  # the file to load, or None for random weights
    source: str  # weights_source label
    problem: str = ""  # why the weights are unavailable (full message)
    short: str = ""  # the same in a few words, for weights_source on fallback


def _resolve(spec: BackboneSpec, weights: str) -> _Resolved:
    if weights in ("random", "pretrain"):  # pretrain: the file comes from the pretrain stage
        return _Resolved(None, weights)
    if weights == "imagenet":
        loc = weights_location(spec)
        if loc is None:
            problem = f"{spec.name} has no pretrained weights; give a weights file, {_OR_RANDOM}"
            return _Resolved(None, "", problem, "no pretrained weights")
        if loc.path is None:
            return _Resolved(None, "", _missing_message(spec, loc), f"{loc.file_name} not cached")
        return _Resolved(loc.path, f"imagenet:{spec.weights}")
    path = Path(weights).expanduser()
    if path.is_file():
        return _Resolved(path, f"file:{path.name}")
    if path.suffix in _FILE_SUFFIXES or os.sep in weights:
        problem = f"weights file not found: {weights} (check the path, {_OR_RANDOM})"
    else:
        problem = f"unknown weights '{weights}';{did_you_mean(weights, WEIGHT_CHOICES)}"
        problem += " (or give the path of a .safetensors/.pt/.pth file)"
    return _Resolved(None, "", problem, f"{path.name} not found")


def check_weights(name: str, weights: str) -> str:
    """Why ``weights`` are unavailable for backbone ``name`` ("" when they are): a preflight
    that touches no network and builds nothing."""
    return _resolve(get_spec(name), weights).problem


def create_backbone(
    name: str,
    weights: str = "random",
    in_chans: int = 3,
    fallback: str = "none",
    pretrained: Path | None = None,
    pretrained_label: str = "pretrain",
) -> LoadedBackbone:
    """Build backbone ``name`` with ``weights`` (imagenet | pretrain | random | a file).

    ImageNet weights come only from the local cache (never downloaded); ``pretrain`` reads
    ``pretrained``, the file of cad's offline source (the pretrain stage or ``cad
    pretrain``), described by ``pretrained_label``. When weights are unavailable this
    raises WeightsError naming the file and folder, unless ``fallback`` is "pretrain"
    (then ``pretrained`` is loaded) or "random"; either way ``fell_back`` is set. Weights
    that do not fit the network always raise. A stem conv trained on 3 channels is
    adapted to ``in_chans`` like timm does.
    """
    spec = get_spec(name)
    look_up_option(fallback, ("none", "pretrain", "random"), "fallback")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise CadError(f"in_chans must be an int >= 1, got {in_chans!r}")
    path, source, problem, short = _resolve(spec, weights)
    if weights == "pretrain" or (problem and fallback == "pretrain"):
        if pretrained is None:
            raise WeightsError(
                f"{name}: weights from cad's offline source need the pretrain stage's file "
                "(cad run adds the stage; elsewhere pass the path `cad pretrain` prints)"
            )
        path, source = pretrained, pretrained_label
    if problem and fallback == "none":
        raise WeightsError(problem)
    state = read_state_dict(path) if path is not None else None
    model = spec.builder(in_chans)
    if problem and fallback == "random":
        message = f"WARNING: {problem} -- FALLING BACK TO RANDOM WEIGHTS for {name}"
        return LoadedBackbone(model.eval(), spec, f"random (fallback: {short})", True, message)
    if problem:
        source = f"{source} (fallback: {short})"
    message = f"{name}: {source} weights, {in_chans} input channel(s)"
    if problem:
        message = f"{problem} -- using cad's offline pretrained weights instead: {message}"
    if state is not None and path is not None:
        adapted = load_weights(model, state, f"weights {path.name} for {name}")
        if source.startswith("imagenet:") and hasattr(model, "transform_input"):
            # torchvision's GoogLeNet/Inception v3 weights expect its input re-scaling
            model.transform_input = in_chans == 3
        if adapted:
            message += f" ({', '.join(adapted)} adapted to {in_chans} channel(s))"
    return LoadedBackbone(model.eval(), spec, source, bool(problem), message)


def node_shapes(
    model: nn.Module, nodes: Sequence[str], size: int, in_chans: int
) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of each node (no batch dim), from one eval forward of zeros."""
    was_training = model.training
    try:
        extractor = create_feature_extractor(
            model, return_nodes=list(nodes), suppress_diff_warning=True
        ).eval()
        with torch.no_grad():
            out = extractor(torch.zeros(1, in_chans, size, size))
    finally:
        model.train(was_training)
    return {n: tuple(out[n].shape[1:]) for n in nodes}


def describe(spec: BackboneSpec, measure: bool = True) -> dict[str, object]:
    """Size, cost and weight availability of a backbone.

    ``measure`` builds the network (random weights) for ``params`` and ``gflops``: forward
    FLOPs at ``input_size``, batch 1, as counted by torch's FlopCounterMode (2 per
    multiply-add); without it both are None and nothing is built. ``pretrained``: the spec
    has weights; ``cached``: their file is in the local cache now.
    """
    params: int | None = None
    gflops: float | None = None
    if measure:
        model = spec.builder(spec.in_chans).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, spec.in_chans, spec.input_size, spec.input_size))
        params = sum(p.numel() for p in model.parameters())
        gflops = round(counter.get_total_flops() / 1e9, 3)
    loc = weights_location(spec)
    return {
        "name": spec.name,
        "family": spec.family,
        "source": spec.source,
        "description": spec.description,
        "params": params,
        "gflops": gflops,
        "input_size": spec.input_size,
        "min_size": spec.min_size,
        "in_chans": spec.in_chans,
        "pretrained": spec.weights is not None,
        "weights": spec.weights,
        "cached": loc is not None and loc.cached,
        "weights_file": None if loc is None else str(loc.folder / loc.file_name),
        "nodes": len(spec.nodes),
    }
