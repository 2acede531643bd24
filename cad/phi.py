"""Keyed pseudonyms: the only form in which patient/study/series/file identity leaves ingest.

HMAC-SHA256 with a local secret, so keys are stable across runs on one site but cannot be
reversed or recomputed by anyone without the secret. The secret comes from the
``CAD_SECRET`` environment variable, else from ``.cad_secret`` in the working directory
(created with mode 0600 on first use).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "CAD_SECRET"
SECRET_FILE = ".cad_secret"


def load_secret(workdir: str | Path | None = None) -> bytes:
    """Return the pseudonymisation secret, creating ``workdir/.cad_secret`` if needed."""
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = Path(workdir or ".") / SECRET_FILE
    if path.exists():
        return path.read_text().strip().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value.encode()


class Pseudonymizer:
    """Maps identifiers to short keyed pseudonyms, e.g. ``pat-3f9a1c2b7d0e``."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def key(self, kind: str, value: str, length: int = 12) -> str:
        # surrogateescape: a file name that is not valid UTF-8 keys by its raw bytes
        message = f"{kind}\x00{value}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self.secret, message, hashlib.sha256)
        return f"{kind}-{digest.hexdigest()[:length]}"

    def patient(self, patient_id: str) -> str:
        return self.key("pat", patient_id)

    def study(self, study_uid: str) -> str:
        return self.key("stu", study_uid)

    def series(self, series_uid: str) -> str:
        return self.key("ser", series_uid)

    def instance(self, sop_uid: str) -> str:
        return self.key("ins", sop_uid)

    def slice(self, study_uid: str, index: int) -> str:
        """One slice of a study's sorted volume (the sample key of ingest and scoring)."""
        return self.key("slc", f"{study_uid}/{index}")

    def file(self, path: str | Path) -> str:
        try:
            absolute = str(Path(path).resolve())
        except (OSError, RuntimeError):  # a symbolic link loop: key the path as given
            absolute = os.path.abspath(path)
        return self.key("file", absolute)
