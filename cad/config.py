"""Pipeline configuration: pydantic models of ``pipelines/*.yaml``, one section per stage.

Every model forbids unknown keys, so a typo fails before any work with the YAML path and
the nearest valid key. ``include:`` pulls reusable fragments from ``configs/``; ``--set
a.b=c`` overrides are applied to the merged mapping and validated again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cad.errors import ConfigError, did_you_mean


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhantomConfig(Section):
    patients: int = Field(36, ge=4, description="number of synthetic patients")
    slices: int = Field(24, ge=8, description="slices per series")
    size: int = Field(128, ge=32, description="in-plane matrix size (pixels)")
    seed: int = 7
    lesion_fraction: float = Field(0.6, gt=0, lt=1, description="share of patients with a lesion")


class DataConfig(Section):
    """Where samples come from: the built-in phantom, or a manifest under a data root."""

    phantom: PhantomConfig = PhantomConfig()
    manifest: str | None = Field(None, description="manifest CSV; when set the phantom is unused")
    root: str | None = Field(None, description="data root the manifest's paths are relative to")
    margin: int = Field(5, ge=0, description="slices between positive and negative labels")

    @property
    def uses_phantom(self) -> bool:
        return self.manifest is None


class InputConfig(Section):
    """How a DICOM study becomes a network input. Stored in every model package."""

    channels: Literal["dce", "repeat", "single"] = "dce"
    phases: tuple[str, ...] = ("pre", "post1", "post1-pre")
    normalization: Literal["percentile", "zscore"] = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    size: int = Field(96, ge=16, description="slices are resized to size x size")

    @field_validator("phases")
    @classmethod
    def _check_phases(cls, phases: tuple[str, ...]) -> tuple[str, ...]:
        for phase in phases:
            for part in phase.split("-"):
                if part != "pre" and not (part.startswith("post") and part[4:].isdigit()):
                    raise ValueError(
                        f"phase '{phase}' is not pre, postN or a difference like 'post1-pre'"
                    )
        return phases

    @property
    def in_chans(self) -> int:
        return (
            1 if self.channels == "single" else 3 if self.channels == "repeat" else len(self.phases)
        )


class SplitConfig(Section):
    test: float = Field(0.2, gt=0, lt=0.5, description="share of patients held out for test")
    val: float = Field(0.15, gt=0, lt=0.5, description="share of patients for validation")
    folds: int = Field(3, ge=2, description="patient-grouped CV folds inside train")
    seed: int = 0


class BalanceConfig(Section):
    method: Literal["none", "over", "under", "combined"] = "over"
    ratio: float = Field(1.0, gt=0, le=1, description="minority/majority ratio after resampling")
    seed: int = 0


class AugmentConfig(Section):
    mode: Literal["none", "offline", "online"] = "offline"
    copies: int = Field(2, ge=0, description="augmented copies per training slice (offline)")
    flip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    rotate_deg: float = Field(10.0, ge=0, le=180)
    scale: float = Field(0.1, ge=0, lt=1, description="max relative zoom in/out")
    elastic: float = Field(0.0, ge=0, le=1, description="probability of elastic deformation")
    bias_field: float = Field(0.3, ge=0, le=1)
    gibbs: float = Field(0.0, ge=0, le=1)
    noise: float = Field(0.2, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0, le=1)
    seed: int = 0


class DenoiseConfig(Section):
    """Optional DnCNN denoising, trained on the training images with synthetic noise."""

    enabled: bool = False
    sigma: float = Field(0.05, gt=0, description="synthetic Gaussian noise (normalised units)")
    epochs: int = Field(5, ge=1)
    depth: int = Field(8, ge=3, description="DnCNN layers (the paper uses 17)")
    features: int = Field(32, ge=4)
    batch_size: int = Field(16, ge=1)
    seed: int = 0


class BackboneConfig(Section):
    name: str
    weights: str = Field("imagenet", description="imagenet, random, or a local weights file")
    fallback: Literal["none", "random"] = "none"
    nodes: tuple[str, ...] | None = Field(None, description="candidate nodes; default: registry")


class ExtractConfig(Section):
    pooling: tuple[Literal["avg", "max"], ...] = ("avg",)
    batch_size: int = Field(32, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the frozen extractor (inductor, weights frozen); auto: "
        "only when the forward work exceeds compile_min_tflop, where the one-off compile "
        "pays for itself, and one image's forward is below compile_max_gflop_per_image "
        "(small inputs, where per-op overhead is what compiling removes)",
    )
    compile_min_tflop: float = Field(20.0, gt=0)
    compile_max_gflop_per_image: float = Field(6.0, gt=0)


class ProbeConfig(Section):
    kernel: Literal["linear", "rbf"] = "linear"
    C: float = Field(1.0, gt=0)
    solver: Literal["auto", "libsvm", "liblinear"] = Field(
        "auto",
        description="linear kernel: libsvm (kernel form, fast when samples < features "
        "or few samples), liblinear (many samples); auto picks by shape",
    )
    max_iter: int = Field(5000, ge=100, description="liblinear iterations")
    n_jobs: int = Field(-1, description="joblib workers over nodes (-1: all cores)")


class FinetuneConfig(Section):
    connection: str = Field("next", description="next, same, last, or a node name")
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["none", "cosine"] = "cosine"
    loss: Literal["weighted", "plain"] = "plain"
    patience: int = Field(3, ge=1, description="early stopping on validation F1")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cache_prefix: bool = Field(True, description="reuse frozen-prefix activations every epoch")
    seed: int = 0


class TransferConfig(Section):
    rounds: Literal[1, 2] = 1
    round1_manifest: str | None = Field(
        None, description="manifest for round 1 (round 2 then uses data.manifest)"
    )
    round1_root: str | None = None


class EvaluateConfig(Section):
    bootstrap: int = Field(1000, ge=10, description="patient-level bootstrap resamples")
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite in workdir")
    experiment: str | None = Field(None, description="default: the pipeline name")
    register_name: str | None = Field("cad-breast-mri", description="registered model name")
    retries: int = Field(2, ge=0)
    timeout_s: float = Field(10.0, gt=0)


class PipelineConfig(Section):
    name: str = "breast_mri"
    data: DataConfig = DataConfig()
    input: InputConfig = InputConfig()
    split: SplitConfig = SplitConfig()
    balance: BalanceConfig = BalanceConfig()
    augment: AugmentConfig = AugmentConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    backbones: tuple[BackboneConfig, ...] = (BackboneConfig(name="resnet50"),)
    extract: ExtractConfig = ExtractConfig()
    probe: ProbeConfig = ProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    transfer: TransferConfig = TransferConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    def section(self, name: str) -> dict[str, Any]:
        """The canonical JSON-able form of one section (what stage keys hash)."""
        return (
            json.loads(getattr(self, name).model_dump_json())
            if name != "backbones"
            else [json.loads(b.model_dump_json()) for b in self.backbones]
        )


# ----------------------------------------------------------------------------- loading


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such pipeline file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _resolve_include(name: str, relative_to: Path) -> Path:
    for candidate in (relative_to / name, relative_to.parent / name, Path.cwd() / name):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"include '{name}' not found next to {relative_to} or in its parent; "
        "fragments live in configs/ (e.g. include: [configs/training/fast.yaml])"
    )


def load_mapping(path: str | Path) -> dict:
    """Read a pipeline YAML and merge its ``include:`` fragments (the file's own keys win)."""
    path = Path(path)
    data = _read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for name in includes:
        merged = _deep_merge(merged, load_mapping(_resolve_include(name, path.parent)))
    return _deep_merge(merged, data)


def apply_overrides(mapping: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``--set finetune.epochs=2``)."""
    out = copy.deepcopy(mapping)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. finetune.epochs=2")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = out
        for key in keys[:-1]:
            if key.isdigit() and isinstance(node, list):
                node = node[int(key)]
                continue
            node = node.setdefault(key, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set '{item}': '{key}' is not a section")
        value = yaml.safe_load(raw) if raw.strip() else None
        last = keys[-1]
        if isinstance(node, list) and last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return out


def _fields_at(loc: tuple, model: type[BaseModel]) -> list[str]:
    """Field names of the (sub)model addressed by ``loc`` (for did-you-mean hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            break
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ()) or ()
        nested = [
            a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            break
        current = nested[0]
    return list(getattr(current, "model_fields", {}))


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _fields_at(loc[:-1], PipelineConfig))
            lines.append(f"{dotted}: unknown key;{hint}")
        else:
            lines.append(f"{dotted}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: invalid configuration\n  " + "\n  ".join(lines)


def validate(mapping: dict, source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(mapping)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, merge includes, apply ``--set`` overrides and validate a pipeline YAML."""
    mapping = apply_overrides(load_mapping(path), overrides or [])
    return validate(mapping, str(path))


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)


PATH_KEYS = ("data.manifest", "data.root", "transfer.round1_manifest", "transfer.round1_root")


def redact_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with input paths replaced by a short hash: what may leave the machine
    (MLflow params and artifacts). Paths can carry patient or site names."""
    import hashlib

    mapping = json.loads(config.model_dump_json())
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = mapping[section][key]
        if value is not None:
            mapping[section][key] = "path-sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
    return PipelineConfig.model_validate(mapping)


def flatten(config: PipelineConfig) -> dict[str, str]:
    """Flat ``a.b.c -> value`` params for MLflow (input paths redacted)."""
    config = redact_paths(config)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, sub in enumerate(value):
                walk(f"{prefix}.{index}", sub)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

    walk("", json.loads(config.model_dump_json()))
    return out
