"""What every config section shares: result fields versus ``runtime`` throughput knobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Precision = Literal["auto", "bf16", "fp32"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def result_dict(self) -> dict[str, Any]:
        """The JSON form of the fields that define results: every ``runtime`` block removed."""
        return _strip_runtime(self.model_dump(mode="json"))


class Runtime(Section):
    """Settings that change how fast a stage runs, never what it produces."""


def _strip_runtime(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_runtime(v) for k, v in value.items() if k != "runtime"}
    if isinstance(value, list):
        return [_strip_runtime(v) for v in value]
    return value
