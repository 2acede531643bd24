"""Runs stages: reuse a finished artifact, else compute it into a temporary dir and publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cad.pipeline.store import Artifact, ArtifactStore, artifact_key

log = logging.getLogger("cad.pipeline")

StageFn = Callable[[Path], Mapping[str, Any] | None]


@dataclass(frozen=True)
class StageRecord:
    """What happened to one stage in this invocation (goes to summary.json)."""

    stage: str
    label: str
    key: str
    reused: bool
    wall_s: float  # spent in this invocation (0 when reused)
    items: int
    built_wall_s: float  # what computing the artifact took when it ran

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageRunner:
    """Executes stage functions against an :class:`ArtifactStore`.

    ``fn(out_dir)`` writes the artifact's files into ``out_dir`` and may return metadata;
    the key ``items`` (how many things it processed) is used for throughput reporting.
    """

    def __init__(self, store: ArtifactStore, force: Iterable[str] = ()) -> None:
        self.store = store
        self.force = set(force)
        self.records: list[StageRecord] = []
        self._redone: set[str] = set()  # keys recomputed by --force in this invocation

    def run(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, Artifact],
        fn: StageFn,
        label: str | None = None,
    ) -> Artifact:
        label = label or stage
        key = artifact_key(stage, config, {name: art.key for name, art in inputs.items()})
        # a forced stage is redone, and so is everything downstream of it
        redo = stage in self.force or any(a.key in self._redone for a in inputs.values())
        if redo:
            self._redone.add(key)
        else:
            found = self.store.lookup(stage, key)
            if found is not None:
                log.info("%s: reusing finished artifact %s", label, key)
                self.records.append(
                    StageRecord(
                        stage,
                        label,
                        key,
                        True,
                        0.0,
                        int(found.manifest.get("items", 0)),
                        float(found.manifest.get("wall_s", 0.0)),
                    )
                )
                return found
        log.info("%s: running (artifact %s)", label, key)
        tmp = self.store.begin(stage, key)
        start = time.perf_counter()
        try:
            returned = fn(tmp)
            meta = dict(returned) if isinstance(returned, Mapping) else {}
        except BaseException:
            self.store.discard(tmp)
            raise
        wall = time.perf_counter() - start
        meta.setdefault("items", 0)
        artifact = self.store.publish(
            stage,
            key,
            tmp,
            {
                "label": label,
                "config": config,
                "inputs": {name: art.key for name, art in inputs.items()},
                "wall_s": round(wall, 3),
                **meta,
            },
        )
        self.records.append(
            StageRecord(stage, label, key, False, round(wall, 3), meta["items"], round(wall, 3))
        )
        log.info("%s: done in %.1f s", label, wall)
        return artifact
