"""Runtime settings change how fast, never what: every artifact is reused, results are equal."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from cad.api import run_pipeline
from cad.config import PipelineConfig, Runtime, load_config

ROOT = Path(__file__).resolve().parents[2]


def _other(field: str, annotation: object, default: object) -> object:
    """A valid value other than ``default`` for a runtime field."""
    args = typing.get_args(annotation)
    if annotation is bool:
        return not default
    if typing.get_origin(annotation) is typing.Literal:
        return [a for a in args if a != default][-1]  # compile: "off", never a slow "on"
    if default is None:
        return 1
    if isinstance(default, int):
        return 1 if default != 1 else 2
    if isinstance(default, float):
        return default * 2
    raise AssertionError(f"no alternative for runtime field {field} ({annotation})")


def runtime_overrides(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    """``--set`` overrides that change every runtime field of every section."""
    out = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            continue
        dotted = f"{prefix}{name}"
        if issubclass(kind, Runtime):
            for field, sub in kind.model_fields.items():
                value = _other(field, sub.annotation, sub.default)
                text = str(value).lower() if isinstance(value, bool) else value
                out.append(f"{dotted}.{field}={text}")
        else:
            out += runtime_overrides(kind, f"{dotted}.")
    return out


def test_every_section_with_throughput_knobs_is_enumerated():
    changed = {o.split("=")[0] for o in runtime_overrides()}
    assert {
        "data.phantom.runtime.workers",
        "ingest.runtime.workers",
        "extract.runtime.batch_size",
        "extract.runtime.compile",
        "probe.runtime.n_jobs",
        "finetune.runtime.cache_prefix",
        "evaluate.runtime.batch_size",
    } <= changed


def _outcome(result) -> list[tuple]:
    return [
        (
            c.backbone,
            c.round,
            c.nodes.finetune,
            c.nodes.connection,
            c.val_f1,
            {k: (v.value, v.low, v.high) for k, v in c.test.items()},
        )  # fmt: skip
        for c in result.summary.results
    ]


def test_runtime_fields_reuse_every_artifact_and_give_identical_results(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CAD_SECRET", "r" * 64)  # same pseudonyms in both workdirs
    smoke = ROOT / "pipelines/smoke.yaml"
    base = load_config(smoke)
    changed = load_config(smoke, runtime_overrides())
    assert changed != base
    first = run_pipeline(base, tmp_path / "a", track=False)
    reused = run_pipeline(changed, tmp_path / "a", track=False)
    assert all(r.reused for r in reused.records)
    fresh = run_pipeline(changed, tmp_path / "b", track=False)
    assert not any(r.reused for r in fresh.records)
    assert [r.key for r in fresh.records] == [r.key for r in first.records]
    assert _outcome(fresh) == _outcome(first)
