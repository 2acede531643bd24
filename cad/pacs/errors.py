"""Typed PACS errors. Messages name the PACS by its URL (which never carries credentials)
and say how to fix the problem; they never quote the password, a patient identifier or a
server reply (QIDO URLs and replies can carry patient IDs)."""

from __future__ import annotations

from cad.errors import CadError


class PacsError(CadError):
    """Talking to the PACS failed."""


class PacsUrlError(PacsError):
    """The --pacs URL cannot be used."""


class CredentialsError(PacsError):
    """PACS credentials are missing, malformed or stored unsafely."""


class PacsUnreachable(PacsError):
    """No connection to the PACS (refused, timed out, name not resolved)."""


class PacsAuthError(PacsError):
    """The PACS refused our credentials or our AE title."""


class PacsQueryError(PacsError):
    """A query option or file is invalid, or the PACS rejected the query."""


class TransferError(PacsError):
    """A study could not be retrieved completely."""


class StoreError(PacsError):
    """One file could not be stored into the PACS."""
