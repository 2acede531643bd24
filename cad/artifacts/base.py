"""The published artifact directory and the typed view every artifact kind builds on.

A stage's output is one directory in the store; its kind's class (one per kind, in this
package) owns the file names inside it and how they are read and written. Nothing outside
these classes names an artifact's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Artifact:
    """A published, immutable artifact directory. ``meta`` is its manifest (what the stage
    returned, plus the store's own fields: key, files and their checksums, wall time)."""

    kind: ClassVar[str] = "artifact"

    stage: str
    key: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def view(cls, artifact: Artifact) -> Self:
        """The same directory seen as this kind."""
        return cls(artifact.stage, artifact.key, artifact.path, artifact.meta)

    @property
    def items(self) -> int:
        return int(self.meta.get("items", 0))

    @property
    def built_wall_s(self) -> float:
        return float(self.meta.get("wall_s", 0.0))


def write_model(model: BaseModel, path: Path) -> Path:
    """A pydantic model as indented JSON."""
    path.write_text(model.model_dump_json(indent=1) + "\n")
    return path


def read_model(kind: type[M], path: Path) -> M:
    return kind.model_validate(json.loads(path.read_text()))
