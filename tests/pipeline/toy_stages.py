"""A toy stage and graph for runner tests: each stage writes its name and value."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cad.artifacts.base import Artifact
from cad.artifacts.summary import RunDir
from cad.config import Runtime, Section
from cad.pipeline.graph import Graph
from cad.pipeline.runner import Runner
from cad.pipeline.stage import Settings, Stage, StageContext


class Toy(Artifact):
    kind = "toy"
    FILE = "out.txt"

    def text(self) -> str:
        return (self.path / self.FILE).read_text()


class ToyRuntime(Runtime):
    workers: int = 1


class ToySection(Section):
    value: int = 1
    runtime: ToyRuntime = ToyRuntime()


class ToySettings(Settings):
    toy: ToySection


def make_stage(name: str, calls: list[str], fail: bool, sleep: float, parent: bool):
    class ToyStage(Stage[ToySettings]):
        settings_type = ToySettings
        inputs = {"parent": Toy} if parent else {}
        output = Toy
        summary = "a toy"

        def run(self, ctx: StageContext, settings: ToySettings, **inputs: Any) -> dict:
            calls.append(name)
            (ctx.out / Toy.FILE).write_text(f"{name} {settings.toy.value}")
            if sleep:
                print("started", flush=True)
                time.sleep(sleep)
            if fail:
                raise RuntimeError("boom")
            return {"items": 1}

    ToyStage.name = name
    return ToyStage()


def toy_graph(
    workdir: str | Path,
    names: list[str],
    value: int = 1,
    workers: int = 1,
    force: list[str] | None = None,
    calls: list[str] | None = None,
    fail: bool = False,
    sleep: float = 0,
) -> tuple[Runner, Graph, list[str]]:
    """A linear graph ``names[0] -> names[1] -> ...`` and a runner over ``workdir``."""
    calls = [] if calls is None else calls
    graph = Graph()
    previous = None
    settings = ToySettings(toy=ToySection(value=value, runtime=ToyRuntime(workers=workers)))
    for name in names:
        stage = make_stage(name, calls, fail, sleep, previous is not None)
        previous = graph.add(stage, settings, {"parent": previous} if previous else {})
    return Runner(RunDir(workdir), b"secret", force or []), graph, calls
