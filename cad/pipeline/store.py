"""Content-addressed artifact store with atomic publish.

An artifact is a directory ``WORKDIR/artifacts/<stage>-<key>/`` whose key hashes the stage
name, the stage's canonical config, its input artifact keys and the cad version. A stage
writes into a private temporary directory; ``manifest.json`` (with SHA-256 sums of every
file) is written last and the directory is renamed into place with ``os.replace``, so a
killed run never leaves a half artifact that counts. Stale temporaries are removed. A
per-artifact lock makes concurrent runs on one workdir wait for each other, and the
checksums are verified whenever an artifact is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cad import __version__
from cad.artifacts.base import Artifact
from cad.artifacts.checksums import sha256_file
from cad.locks import exclusive

MANIFEST = "manifest.json"
LOCKS = ".locks"  # empty lock files, one per artifact ever computed (never deleted: racy)
log = logging.getLogger("cad.pipeline")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(stage: str, config: Any, inputs: Mapping[str, str]) -> str:
    """Hash of (stage, canonical config, input keys, cad version): the artifact's identity."""
    payload = canonical_json(
        {"stage": stage, "config": config, "inputs": dict(inputs), "version": __version__}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ArtifactStore:
    """Looks up, creates and publishes artifacts under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The finished artifact, or None. A directory without a valid manifest is not one."""
        path = self.path_for(stage, key)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if manifest.get("key") != key:
            return None
        return Artifact(stage, key, path, manifest)

    def lock(self, stage: str, key: str) -> contextlib.AbstractContextManager[None]:
        """Hold this artifact's lock while looking it up and computing it: a second process
        asking for the same artifact waits, then reuses what the first published, instead of
        computing it again and replacing it under a reader."""
        return exclusive(self.root / LOCKS / f"{stage}-{key}", f"{stage}-{key}")

    def begin(self, stage: str, key: str) -> Path:
        """A fresh private directory to write the artifact into."""
        self.clean_stale(stage, key)
        tmp = self.root / f".tmp-{stage}-{key}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        return tmp

    def clean_stale(self, stage: str, key: str) -> None:
        """Remove temporaries of this artifact left by killed runs (not of live processes)."""
        for tmp in self.root.glob(f".tmp-{stage}-{key}-*"):
            pid = int(tmp.name.split("-")[-2])
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, stage: str, key: str, tmp: Path, meta: Mapping[str, Any]) -> Artifact:
        """Checksum every file, write manifest.json last, and rename into place atomically."""
        files = {
            str(p.relative_to(tmp)): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        manifest = {"stage": stage, "key": key, "cad_version": __version__, **meta, "files": files}
        with open(tmp / MANIFEST, "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        final = self.path_for(stage, key)
        if final.exists():  # forced rerun, or a directory without manifest: replace it
            trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        return Artifact(stage, key, final, manifest)

    def discard(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)


def verify(artifact: Artifact) -> list[str]:
    """Files whose SHA-256 no longer matches the manifest (empty when intact)."""
    bad = []
    for name, digest in artifact.meta.get("files", {}).items():
        path = artifact.path / name
        if not path.exists() or sha256_file(path) != digest:
            bad.append(name)
    return bad


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
