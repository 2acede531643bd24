"""The artifact store and the runner: keys, atomic publish, reuse, --force, kill -9."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from toy_stages import Toy, toy_graph

from cad.artifacts.summary import RunDir
from cad.pipeline.store import LOCKS, ArtifactStore, artifact_key, verify


def test_key_depends_on_stage_config_and_inputs():
    base = artifact_key("split", {"seed": 0}, {"ingest": "abc"})
    assert base == artifact_key("split", {"seed": 0}, {"ingest": "abc"})
    assert base != artifact_key("split", {"seed": 1}, {"ingest": "abc"})
    assert base != artifact_key("split", {"seed": 0}, {"ingest": "abd"})
    assert base != artifact_key("augment", {"seed": 0}, {"ingest": "abc"})


def test_publish_writes_manifest_last_with_checksums(tmp_path):
    runner, graph, calls = toy_graph(tmp_path, ["s"])
    art = runner.run_node(graph.nodes[0])
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"out.txt"} and manifest["items"] == 1
    assert verify(art) == []
    (art.path / "out.txt").write_text("changed")
    assert verify(art) == ["out.txt"]


def test_rerun_reuses_and_config_change_reruns(tmp_path):
    runner, graph, calls = toy_graph(tmp_path, ["s"])
    a = runner.run_node(graph.nodes[0])
    runner2, graph2, _ = toy_graph(tmp_path, ["s"], calls=calls)
    b = runner2.run_node(graph2.nodes[0])
    assert a.key == b.key and calls == ["s"] and runner2.records[0].reused
    runner3, graph3, _ = toy_graph(tmp_path, ["s"], value=2, calls=calls)
    runner3.run(graph3)
    assert calls == ["s", "s"]
    runner4, graph4, _ = toy_graph(tmp_path, ["s"], force=["s"], calls=calls)
    runner4.run(graph4)
    assert calls == ["s", "s", "s"]


def test_runtime_settings_are_not_in_the_key(tmp_path):
    runner, graph, calls = toy_graph(tmp_path, ["s"], workers=1)
    first = runner.run(graph)[graph.nodes[0]]
    runner2, graph2, _ = toy_graph(tmp_path, ["s"], workers=8, calls=calls)
    again = runner2.run(graph2)[graph2.nodes[0]]
    assert again.key == first.key and calls == ["s"]


def test_force_redoes_the_stage_and_everything_downstream(tmp_path):
    calls: list[str] = []
    for force in ([], ["b"]):
        runner, graph, _ = toy_graph(tmp_path, ["a", "b", "c"], force=force, calls=calls)
        runner.run(graph)
    assert calls == ["a", "b", "c", "b", "c"]


def test_failed_stage_leaves_nothing(tmp_path):
    runner, graph, _ = toy_graph(tmp_path, ["s"], fail=True)
    with pytest.raises(RuntimeError):
        runner.run(graph)
    store = ArtifactStore(RunDir(tmp_path).artifacts)
    assert store.lookup("s", runner.key(graph.nodes[0])) is None
    assert [p.name for p in RunDir(tmp_path).artifacts.iterdir()] == [LOCKS]


def test_kill_9_mid_stage_then_rerun(tmp_path):
    """A SIGKILLed stage leaves no artifact that counts; the rerun cleans up and finishes."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from toy_stages import toy_graph
        runner, graph, _ = toy_graph({str(tmp_path)!r}, ["s"], sleep=60)
        runner.run(graph)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = RunDir(tmp_path).artifacts
    runner, graph, calls = toy_graph(tmp_path, ["s"])
    assert ArtifactStore(root).lookup("s", runner.key(graph.nodes[0])) is None
    assert any(p.name.startswith(".tmp-") for p in root.iterdir())
    art = runner.run(graph)[graph.nodes[0]]
    assert (art.path / "out.txt").read_text() == "s 1"
    assert isinstance(art, Toy) and art.text() == "s 1"
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def test_a_damaged_finished_artifact_is_computed_again_not_reused(tmp_path):
    runner, graph, calls = toy_graph(tmp_path, ["s"])
    art = runner.run_node(graph.nodes[0])
    (art.path / Toy.FILE).write_text("\x00" * 3)  # e.g. a zeroed images.npy
    runner2, graph2, _ = toy_graph(tmp_path, ["s"], calls=calls)
    again = runner2.run_node(graph2.nodes[0])
    assert calls == ["s", "s"] and not runner2.records[0].reused
    assert verify(again) == [] and again.text() == "s 1"


def test_two_runs_on_one_workdir_compute_an_artifact_once(tmp_path):
    """The second run waits on the first's lock, then reuses what it published (before the
    lock it computed the artifact again and replaced it under the first's readers)."""
    import threading

    first_started, calls = threading.Event(), []
    runner_a, graph_a, _ = toy_graph(tmp_path, ["s"], calls=calls, sleep=0.5)
    runner_b, graph_b, _ = toy_graph(tmp_path, ["s"], calls=calls)
    original = graph_a.nodes[0].stage.run

    def run_and_signal(*args, **kwargs):
        first_started.set()
        return original(*args, **kwargs)

    graph_a.nodes[0].stage.run = run_and_signal
    a = threading.Thread(target=runner_a.run_node, args=(graph_a.nodes[0],))
    a.start()
    assert first_started.wait(60)
    runner_b.run_node(graph_b.nodes[0])  # blocks on the lock until `a` has published
    a.join()
    assert calls == ["s"]
    assert [r.reused for r in runner_a.records + runner_b.records] == [False, True]
