"""A real ``mlflow server`` on a free loopback port, and the page a person sees in it
(headless Chromium), for the tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(root: Path, backend_store_uri: str, *extra: str) -> Iterator[str]:
    """Start ``mlflow server`` (the one beside this interpreter) and yield its URL; stopped
    even if the test fails."""
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            + ["--backend-store-uri", backend_store_uri, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
        yield url
    finally:
        _stop(proc)


def rendered_text(url: str, expect: str, attempts: int = 3) -> str:
    """The visible text of ``url`` after headless Chromium ran its scripts (the MLflow UI is
    a single-page app); retried while ``expect`` is not on the page yet (a loaded machine)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian package chromium)")
    text = ""
    for attempt in range(attempts):
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
            + ["--window-size=1600,1000", f"--virtual-time-budget={20000 * (attempt + 1)}"]
            + ["--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())
        if expect in text:
            break
    return text


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    give_up = time.monotonic() + 180  # a bound for a broken install, not a speed check
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server never became healthy:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's own process group (it forks workers), then make sure."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
