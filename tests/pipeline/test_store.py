import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cad.pipeline.runner import StageRunner
from cad.pipeline.store import ArtifactStore, artifact_key, verify


def test_key_depends_on_stage_config_and_inputs():
    base = artifact_key("split", {"seed": 0}, {"ingest": "abc"})
    assert base == artifact_key("split", {"seed": 0}, {"ingest": "abc"})
    assert base != artifact_key("split", {"seed": 1}, {"ingest": "abc"})
    assert base != artifact_key("split", {"seed": 0}, {"ingest": "abd"})
    assert base != artifact_key("augment", {"seed": 0}, {"ingest": "abc"})


def test_publish_writes_manifest_last_with_checksums(tmp_path):
    runner = StageRunner(ArtifactStore(tmp_path))
    art = runner.run(
        "s", {"a": 1}, {}, lambda out: (out / "x.txt").write_text("hi") and {"items": 1}
    )
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"x.txt"} and manifest["items"] == 1
    assert verify(art) == []
    (art.path / "x.txt").write_text("changed")
    assert verify(art) == ["x.txt"]


def test_rerun_reuses_and_config_change_reruns(tmp_path):
    calls = []

    def stage(out):
        calls.append(1)
        (out / "f").write_text("1")

    store = ArtifactStore(tmp_path)
    a = StageRunner(store).run("s", {"a": 1}, {}, stage)
    runner = StageRunner(store)
    b = runner.run("s", {"a": 1}, {}, stage)
    assert a.key == b.key and len(calls) == 1 and runner.records[0].reused
    runner.run("s", {"a": 2}, {}, stage)
    assert len(calls) == 2
    StageRunner(store, force=["s"]).run("s", {"a": 1}, {}, stage)
    assert len(calls) == 3


def test_force_redoes_the_stage_and_everything_downstream(tmp_path):
    calls = []

    def stage(name):
        def fn(out):
            calls.append(name)
            (out / "f").write_text(name)

        return fn

    store = ArtifactStore(tmp_path)
    for force in ([], ["b"]):
        runner = StageRunner(store, force=force)
        a = runner.run("a", {}, {}, stage("a"))
        b = runner.run("b", {}, {"a": a}, stage("b"))
        runner.run("c", {}, {"b": b}, stage("c"))
    assert calls == ["a", "b", "c", "b", "c"]


def test_failed_stage_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(out):
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        StageRunner(store).run("s", {}, {}, boom)
    assert store.lookup("s", artifact_key("s", {}, {})) is None
    assert list(tmp_path.iterdir()) == []


def test_kill_9_mid_stage_then_rerun(tmp_path):
    """A SIGKILLed stage leaves no artifact that counts; the rerun cleans up and finishes."""
    script = textwrap.dedent(f"""
        import os, time, sys
        from cad.pipeline.runner import StageRunner
        from cad.pipeline.store import ArtifactStore
        def stage(out):
            (out / "part").write_text("half")
            print("started", flush=True)
            time.sleep(60)
        StageRunner(ArtifactStore({str(tmp_path)!r})).run("s", {{}}, {{}}, stage)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ArtifactStore(tmp_path)
    key = artifact_key("s", {}, {})
    assert store.lookup("s", key) is None
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    art = StageRunner(store).run("s", {}, {}, lambda out: (out / "part").write_text("whole"))
    assert (art.path / "part").read_text() == "whole"
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
