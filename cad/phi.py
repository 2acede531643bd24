"""Keyed pseudonyms: the only form in which patient/study/series/file identity leaves ingest.

HMAC-SHA256 with a local secret, so keys are stable across runs on one site but cannot be
reversed or recomputed by anyone without the secret. The secret comes from the
``CAD_SECRET`` environment variable, else from ``.cad_secret`` in the folder of the
command's output: the workdir for ``cad run`` and its stages, the folder of ``--out`` for
``cad score`` and ``cad data manifest``, of ``--report`` for ``cad data check`` (created
with mode 0600 on first use; an empty, short or shared secret is refused).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from cad.errors import CadError

SECRET_ENV = "CAD_SECRET"
SECRET_FILE = ".cad_secret"


MIN_SECRET_CHARS = 32  # 128 bits as hex: pseudonyms must not be recomputable by guessing
NEW_SECRET_HINT = 'python -c "import secrets; print(secrets.token_hex(32))"'


class SecretError(CadError):
    """The pseudonymisation secret is missing, too weak or readable by others."""


def load_secret(workdir: str | Path | None = None) -> bytes:
    """Return the pseudonymisation secret, creating ``workdir/.cad_secret`` if needed.

    A weak secret makes pseudonyms reversible by anyone who knows the patient IDs, so an
    empty, short or group/world-readable secret is refused, never used silently."""
    env = os.environ.get(SECRET_ENV)
    if env is not None:
        if len(env.strip()) < MIN_SECRET_CHARS:
            raise SecretError(
                f"{SECRET_ENV} is shorter than {MIN_SECRET_CHARS} characters; set it to a "
                f"random value, e.g. the output of {NEW_SECRET_HINT}, or unset it to use "
                f"the workdir's {SECRET_FILE}"
            )
        return env.strip().encode()
    path = Path(workdir or ".") / SECRET_FILE
    if path.exists():
        return _read_secret_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_secret_file(path)
    return _read_secret_file(path)


def _read_secret_file(path: Path) -> bytes:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"{path} is readable by other users; restrict it with `chmod 600 {path}` "
            "(anyone who can read it can recompute the pseudonyms)"
        )
    value = path.read_text(errors="replace").strip()
    if len(value) < MIN_SECRET_CHARS:
        raise SecretError(
            f"{path} holds no usable secret ({len(value)} characters, at least "
            f"{MIN_SECRET_CHARS} needed). Restore it from your backup to keep the existing "
            "pseudonyms, or delete it to create a new one (every pseudonym then changes)"
        )
    return value.encode()


def _create_secret_file(path: Path) -> None:
    """Write the secret to a private temporary file and link it into place, so a failed
    write (a full disk) never leaves an empty ``.cad_secret`` behind, and two processes
    creating it at once agree on one value."""
    fd, tmp = tempfile.mkstemp(prefix=".cad_secret-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if another process created it first: use theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


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
