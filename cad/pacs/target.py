"""The PACS a command talks to, parsed from its URL.

``http(s)://host:port/dicom-web`` is a DICOMweb service (QIDO-RS, WADO-RS, STOW-RS);
``dicom://CALLED_AET@host:port`` is a DIMSE peer (C-FIND, C-GET, C-STORE). Credentials
are never part of the URL: they come from :mod:`cad.pacs.credentials`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cad.pacs.errors import PacsUrlError

DEFAULT_CALLING_AET = "CAD"
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")  # 16 chars, no '\'
FORMS = "http://host:port/dicom-web (DICOMweb) or dicom://CALLED_AET@host:port (DIMSE)"


@dataclass(frozen=True)
class PacsTarget:
    """Where the PACS is; ``url`` is credential-free and safe to print."""

    kind: str  # "dicomweb" | "dimse"
    url: str
    host: str
    port: int
    called_aet: str = ""
    calling_aet: str = DEFAULT_CALLING_AET

    def __str__(self) -> str:
        return self.url


def check_aet(value: str, what: str) -> str:
    if not _AET.match(value) or value != value.strip():
        raise PacsUrlError(
            f"{what} '{value}' is not a DICOM AE title: 1 to 16 printable characters, no "
            "backslash, no leading or trailing spaces (e.g. ORTHANC)"
        )
    return value


def parse_target(url: str, calling_aet: str = DEFAULT_CALLING_AET) -> PacsTarget:
    """``url`` -> PacsTarget, or PacsUrlError with the accepted forms."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if parts.username is not None or parts.password is not None:
            # never echo the URL: it holds a password
            raise PacsUrlError(
                "the --pacs URL carries credentials (user:password@); remove them and set "
                "CAD_PACS_USER / CAD_PACS_PASSWORD or CAD_PACS_CREDENTIALS instead"
            )
        if not parts.hostname:
            raise PacsUrlError(f"--pacs '{url}' names no host; expected {FORMS}")
        if parts.query or parts.fragment:
            raise PacsUrlError(f"--pacs '{url}': remove the query or fragment; expected {FORMS}")
        port = _port(parts, url, 443 if scheme == "https" else 80)
        clean = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return PacsTarget("dicomweb", clean, parts.hostname, port, calling_aet=calling_aet)
    if scheme == "dicom":
        if parts.password is not None:
            raise PacsUrlError(
                "a dicom:// URL holds the called AE title before '@', never a password; "
                f"expected {FORMS}"
            )
        if not parts.username or not parts.hostname or parts.path.strip("/"):
            raise PacsUrlError(f"--pacs '{url}': expected {FORMS}, e.g. dicom://ORTHANC@pacs:104")
        called = check_aet(parts.username, "the called AE title")
        check_aet(calling_aet, "--calling-aet")
        port = _port(parts, url, 104)
        clean = f"dicom://{called}@{parts.hostname}:{port}"
        return PacsTarget("dimse", clean, parts.hostname, port, called, calling_aet)
    raise PacsUrlError(f"--pacs '{url}' is neither DICOMweb nor DIMSE; expected {FORMS}")


def _port(parts, url: str, default: int) -> int:
    try:
        return parts.port or default
    except ValueError:
        raise PacsUrlError(f"--pacs '{url}' has an invalid port; expected {FORMS}") from None
