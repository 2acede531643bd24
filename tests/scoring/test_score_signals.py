"""SIGTERM on a real ``cad score`` process: the whole process tree ends (no orphaned decode
workers or fork server), and ``--resume`` then writes exactly the uninterrupted output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from score_helpers import SECRET

ROOT = Path(__file__).resolve().parents[2]


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _score(export, package, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cad", "score", str(export.root), "--model", str(package),
               "--out", str(out), "--key-map", str(out.with_name("keys.csv")),
               "--level", "patient", "--batch-size", "8", "--workers", "2", *extra]  # fmt: skip
    env = {**os.environ, "CAD_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def test_sigterm_ends_every_worker_and_resume_completes_identically(
    export, package, baseline, tmp_path
):
    out = tmp_path / "p.csv"
    proc = _score(export, package, out)
    while len(_group(proc.pid)) < 4 and proc.poll() is None:  # main, fork server, 2 workers
        time.sleep(0.05)
    assert proc.poll() is None, "scoring ended before its workers were seen"
    os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate()[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "interrupted (SIGTERM)" in output and "Traceback" not in output
    for _ in range(100):  # the fork server notices its parent's end within moments
        if not _group(proc.pid):
            break
        time.sleep(0.05)
    assert _group(proc.pid) == [], "a worker process outlived cad score"

    resumed = _score(export, package, out, "--resume")
    output = resumed.communicate()[0].decode()
    assert resumed.returncode == baseline.summary.exit_code, output
    assert out.read_bytes() == baseline.out.read_bytes()
    assert out.with_name("keys.csv").read_bytes() == baseline.key_map.read_bytes()


def test_scoring_keeps_its_secret_beside_its_predictions(export, package, tmp_path, monkeypatch):
    from cad.phi import SECRET_FILE
    from cad.scoring.api import score_folder

    monkeypatch.delenv("CAD_SECRET")
    out = tmp_path / "scores" / "p.csv"
    score_folder(package, export.root, out, workers=0, progress=False)
    assert (out.parent / SECRET_FILE).is_file()
    assert not (tmp_path / SECRET_FILE).exists()  # the cwd (tmp_path) gets none
    assert not (export.root / SECRET_FILE).exists()
