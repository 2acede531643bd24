"""PACS credentials: from the environment or a private file, never the command line.

``CAD_PACS_USER`` and ``CAD_PACS_PASSWORD``, else the JSON file named by
``CAD_PACS_CREDENTIALS`` (``{"user": "...", "password": "..."}``), which must be readable
by its owner only (mode 0600). No credentials: the PACS is used without authentication.
The password is never printed: it is left out of ``repr`` and of every message.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cad.pacs.errors import CredentialsError

USER_ENV, PASSWORD_ENV, FILE_ENV = "CAD_PACS_USER", "CAD_PACS_PASSWORD", "CAD_PACS_CREDENTIALS"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for messages ("CAD_PACS_USER / ...")


def load_credentials() -> Credentials | None:
    """The credentials the environment names, or None for an unauthenticated PACS."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user is not None or password is not None:
        if not user or password is None:
            missing = USER_ENV if not user else PASSWORD_ENV
            raise CredentialsError(
                f"{missing} is not set; set both {USER_ENV} and {PASSWORD_ENV}, or neither "
                f"and name a credentials file in {FILE_ENV}"
            )
        return Credentials(user, password, f"{USER_ENV} / {PASSWORD_ENV}")
    name = os.environ.get(FILE_ENV)
    return _from_file(Path(name).expanduser()) if name else None


def _from_file(path: Path) -> Credentials:
    try:
        mode = path.stat().st_mode
    except OSError:
        raise CredentialsError(
            f"{FILE_ENV} names {path}, which cannot be read; create it with "
            '{"user": "...", "password": "..."} and `chmod 600` it'
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{path} ({FILE_ENV}) is readable by other users; restrict it with `chmod 600 {path}`"
        )
    try:
        data = json.loads(path.read_text())
        user, password = data["user"], data["password"]
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise CredentialsError(  # the file's text is never quoted: it holds the password
            f"{path} ({FILE_ENV}) is not a JSON object with string fields 'user' and "
            '\'password\'; write it as {"user": "...", "password": "..."}'
        ) from None
    return Credentials(user, password, str(path))
