"""Loading pipeline YAMLs: ``include:`` fragments, ``--set`` overrides, validation messages.

A typo fails before any work with the YAML path and the nearest valid key; a throughput
knob written at a section's top level is pointed to its ``runtime`` block.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cad.config.sections import PipelineConfig, Runtime
from cad.errors import ConfigError, did_you_mean

PATH_KEYS = ("data.manifest", "data.root", "transfer.round1_manifest", "transfer.round1_root")
MAX_YAML_BYTES = 1 << 20  # a pipeline is a few KB; anything larger is the wrong file


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; pass a pipeline YAML such as {path}/x.yaml")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(raw) > MAX_YAML_BYTES or b"\x00" in raw:
        raise ConfigError(f"{path}: not a pipeline YAML (binary or larger than 1 MB)")
    try:
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the pipeline as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _resolve_include(name: object, relative_to: Path) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{relative_to}: include entries must be file names, got {name!r} "
            "(e.g. include: [configs/training/fast_cpu.yaml])"
        )
    for candidate in (relative_to / name, relative_to.parent / name, Path.cwd() / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"include '{name}' not found next to {relative_to} or in its parent; "
        "fragments live in configs/ (e.g. include: [configs/training/fast_cpu.yaml])"
    )


def load_mapping(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a pipeline YAML and merge its ``include:`` fragments (the file's own keys win)."""
    path = Path(path)
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"include loop: {loop}; remove one of these includes")
    data = _read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: include must be a file name or a list of file names")
    merged: dict = {}
    for name in includes:
        fragment = _resolve_include(name, path.parent)
        merged = _deep_merge(merged, load_mapping(fragment, (*_chain, path.resolve())))
    return _deep_merge(merged, data)


def _parse_value(item: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set '{item}': the value is not valid YAML; quote it") from None


def apply_overrides(mapping: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``--set finetune.epochs=2``)."""
    out = copy.deepcopy(mapping)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. finetune.epochs=2")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set '{item}': empty key part; write e.g. finetune.epochs=2")
        node: Any = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(
                        f"--set '{item}': '{key}' is not an index of a list of {len(node)} "
                        f"(use 0..{len(node) - 1})"
                    )
                if last:
                    node[int(key)] = _parse_value(item, raw)
                else:
                    node = node[int(key)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': '{keys[depth - 1]}' is not a section")
            if last:
                node[key] = _parse_value(item, raw)
            else:
                node = node.setdefault(key, {})
    return out


def _model_at(loc: tuple, model: type[BaseModel]) -> type[BaseModel] | None:
    """The (sub)model addressed by ``loc``, or None if ``loc`` leaves the models."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return None
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ()) or ()
        nested = [
            a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            return None
        current = nested[0]
    return current


def _unknown_key(loc: tuple) -> str:
    parent = _model_at(loc[:-1], PipelineConfig)
    key = str(loc[-1])
    fields = getattr(parent, "model_fields", {})
    runtime = fields.get("runtime")
    if runtime is not None and isinstance(runtime.annotation, type):
        kind = runtime.annotation
        if issubclass(kind, Runtime) and key in kind.model_fields:
            where = ".".join(str(p) for p in loc[:-1])
            return f" it is a runtime setting now: write {where}.runtime.{key}"
    return did_you_mean(key, list(fields))


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"{dotted}: unknown key;{_unknown_key(loc)}")
        else:
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            lines.append(f"{dotted}: {err['msg']} (got {shown})")
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
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def path_digest(value: str) -> str:
    """What may stand for an input path outside the machine: paths can carry patient names."""
    return "path-sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def redact_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with input paths replaced by a short hash: what may be written to
    artifacts, logs and MLflow."""
    mapping = config.model_dump(mode="json")
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = mapping[section][key]
        if value is not None:
            mapping[section][key] = path_digest(value)
    return PipelineConfig.model_validate(mapping)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flat ``a.b.c -> value`` strings of a config or section (lists of sections by index)."""
    if isinstance(value, BaseModel):
        value = json.loads(value.model_dump_json())
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else key))
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for index, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}.{index}"))
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def flatten_params(config: PipelineConfig) -> dict[str, str]:
    """The whole config as flat MLflow params, input paths redacted."""
    return flatten(redact_paths(config))
