"""Runs a graph: the only place that computes keys, reuses artifacts and honours ``--force``.

For every node: key = hash(stage name, the stage's identity of its settings, the input
artifacts' keys, cad version). A finished artifact with that key is reused; otherwise the
stage runs into a private temporary directory (with a scratch folder for checkpoints that
survives a kill) and the store publishes it atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cad.artifacts.base import Artifact
from cad.artifacts.summary import RunDir, StageRecord
from cad.pipeline.graph import Graph, Node
from cad.pipeline.stage import StageContext
from cad.pipeline.store import ArtifactStore, artifact_key, verify

log = logging.getLogger("cad.pipeline")


class Runner:
    """Executes nodes in order against the workdir's artifact store."""

    def __init__(
        self,
        workdir: RunDir,
        secret: bytes,
        force: Iterable[str] = (),
        redone: Iterable[str] = (),
    ) -> None:
        self.workdir = workdir
        self.store = ArtifactStore(workdir.artifacts)
        self.secret = secret
        self.force = set(force)
        self.records: list[StageRecord] = []
        self.results: dict[Node, Artifact] = {}
        # keys recomputed by --force in this invocation (given by a driver to its workers,
        # so that what follows a forced stage is redone wherever it runs)
        self.redone: set[str] = set(redone)

    def key(self, node: Node) -> str:
        inputs = {name: self.results[parent].key for name, parent in node.inputs.items()}
        return artifact_key(node.stage.name, node.stage.identity(node.settings), inputs)

    def run(self, graph: Graph) -> dict[Node, Artifact]:
        for node in graph:
            self.run_node(node)
        return self.results

    def run_node(self, node: Node) -> Artifact:
        """The node's artifact (its inputs first): reused when finished (unless forced),
        else computed."""
        if node in self.results:
            return self.results[node]
        stage, output = node.stage, node.stage.output
        inputs = {name: self.run_node(parent) for name, parent in node.inputs.items()}
        key = self.key(node)
        redo = stage.name in self.force or any(a.key in self.redone for a in inputs.values())
        with self.store.lock(stage.name, key):
            if redo:
                self.redone.add(key)
            else:
                found = self._intact(node, self.store.lookup(stage.name, key))
                if found is not None:
                    log.info("%s: reusing finished artifact %s", node.label, key)
                    artifact = output.view(found)
                    self._record(node, key, True, 0.0, artifact)
                    self.results[node] = artifact
                    return artifact
            return self._compute(node, key, inputs)

    def _intact(self, node: Node, found: Artifact | None) -> Artifact | None:
        """``found`` if every file still matches its checksum; else None (it is recomputed)."""
        if found is None:
            return None
        damaged = verify(found)
        if damaged:
            log.warning(
                "%s: finished artifact %s was changed on disk (%s); computing it again",
                node.label,
                found.key,
                ", ".join(damaged[:3]),
            )
            return None
        return found

    def _compute(self, node: Node, key: str, inputs: dict[str, Artifact]) -> Artifact:
        stage, output = node.stage, node.stage.output
        log.info("%s: running (artifact %s)", node.label, key)
        scratch = self.workdir.scratch / f"{stage.name}-{key}"
        tmp = self.store.begin(stage.name, key)
        ctx = StageContext(out=tmp, scratch=scratch, label=node.label, secret=self.secret)
        start = time.perf_counter()
        try:
            returned = stage.execute(ctx, node.settings, inputs)
        except BaseException:
            self.store.discard(tmp)
            raise
        wall = round(time.perf_counter() - start, 3)
        meta: dict[str, Any] = dict(returned) if isinstance(returned, Mapping) else {}
        meta.setdefault("items", 0)
        published = self.store.publish(
            stage.name,
            key,
            tmp,
            {
                "label": node.label,
                "config": stage.identity(node.settings),
                "inputs": {name: a.key for name, a in inputs.items()},
                "wall_s": wall,
                **meta,
            },
        )
        shutil.rmtree(scratch, ignore_errors=True)  # the published artifact supersedes it
        artifact = output.view(published)
        self._record(node, key, False, wall, artifact)
        log.info("%s: done in %.1f s", node.label, wall)
        self.results[node] = artifact
        return artifact

    def _record(self, node: Node, key: str, reused: bool, wall: float, art: Artifact) -> None:
        self.records.append(
            StageRecord(
                stage=node.stage.name,
                label=node.label,
                key=key,
                reused=reused,
                wall_s=wall,
                items=art.items,
                built_wall_s=art.built_wall_s,
                ended=time.time(),
            )
        )
