"""The stage contract: what every pipeline stage declares, and what it is handed to run.

A stage is a function of its settings (the config sections it reads, plus the parameters of
its place in the graph, e.g. backbone and round) and its typed input artifacts; it writes one
output artifact. Its key hashes ``identity(settings)`` (the result-defining fields: no
``runtime`` block, no local paths), its inputs' keys and the cad version, so the runner, and
only the runner, decides what is reused.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from cad.artifacts.base import Artifact
from cad.config import Section


class Settings(BaseModel):
    """A stage's configuration. Fields named in ``local_fields`` locate inputs on this
    machine (paths): they are needed to run but never hashed, logged or stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    local_fields: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict[str, Any]:
        """The result-defining content: sections without their runtime blocks."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name in self.local_fields:
                continue
            value = getattr(self, name)
            if isinstance(value, Section):
                out[name] = value.result_dict()
            elif isinstance(value, BaseModel):
                out[name] = value.model_dump(mode="json")
            else:
                out[name] = value
        return out


@dataclass(frozen=True)
class StageContext:
    """What the runner hands a stage: where to write, where to checkpoint, who it is."""

    out: Path  # private temporary directory; becomes the artifact when the stage returns
    scratch: Path  # survives a kill (checkpoints); keyed like the artifact, removed on publish
    label: str  # e.g. "finetune[vgg16 r1]"
    secret: bytes  # the workdir's pseudonymisation secret


S = TypeVar("S", bound=Settings)


class Stage(Generic[S]):
    """One kind of step. Subclasses set the class attributes and define
    ``run(self, ctx, settings, **inputs)`` whose keyword parameters are exactly the names in
    ``inputs`` (those in ``optional_inputs`` default to None); this is checked when the
    subclass is defined. ``run`` writes the artifact's files into ``ctx.out`` and returns
    metadata for its manifest (``items``: how many things it processed)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what the artifact holds (README table, --help)
    settings_type: ClassVar[type[Settings]]
    inputs: ClassVar[Mapping[str, type[Artifact]]] = {}
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    output: ClassVar[type[Artifact]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = getattr(cls, "run", None)
        if run is None:
            raise TypeError(f"stage {cls.__name__} defines no run()")
        params = list(inspect.signature(run).parameters.values())[3:]  # self, ctx, settings
        names = {
            p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params) and names != set(cls.inputs):
            raise TypeError(
                f"stage {cls.__name__}: run() takes {sorted(names)}, inputs declare "
                f"{sorted(cls.inputs)}"
            )

    def identity(self, settings: S) -> dict[str, Any]:
        """What defines this stage's result (hashed into its key)."""
        return settings.identity()

    def execute(
        self, ctx: StageContext, settings: S, inputs: Mapping[str, Artifact]
    ) -> Mapping[str, Any] | None:
        """Call ``run`` with the inputs as keyword arguments (what the runner does)."""
        run: Any = getattr(self, "run")  # noqa: B009 - declared by subclasses, checked above
        result: Mapping[str, Any] | None = run(ctx, settings, **inputs)
        return result
