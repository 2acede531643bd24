"""The folder walk and safe file opening: special files, unreadable paths and side files
get their own outcome instead of a hang, a crash or an omission."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cad.io.outcome import Outcome

# Header rows of the CSV files cad writes (check / ingest / scoring reports, manifests,
# samples, Duke boxes). A test keeps this in step with the writers' column constants.
SIDE_FILE_HEADERS = frozenset(
    {
        "file_key,outcome,reason",
        "file,outcome,reason",
        "pseudonym,identifier_kind,identifier",
        "patient_id,path,series,slice_index,label",
        "patient_id,path,label",
        "sample,patient,study,series,slice,label",
        "Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice",
        "level,patient,study,series,instance,slice,sample,probability,label,slices,"
        "positive_slices,max_probability,mean_probability",
    }
)
SIDE_FILE_NAMES = frozenset({"annotation_boxes.csv", "phantom.json", ".cad_secret"})
_OPEN_ERRORS = {
    errno.ELOOP: (Outcome.UNREADABLE, "symbolic link loop"),
    errno.ENOENT: (Outcome.UNREADABLE, "file vanished or a symbolic link to nothing"),
    errno.EACCES: (Outcome.UNREADABLE, "permission denied"),
    errno.EPERM: (Outcome.UNREADABLE, "permission denied"),
    errno.ENXIO: (Outcome.SPECIAL_FILE, "socket or device without a reader"),
}


def walk(root: str | Path) -> list[str]:
    """Every entry below ``root`` that is not a folder walked into, in sorted order.

    Regular files, and also special files, broken links, symbolic links to folders (not
    followed: no loops, no double counting) and folders that cannot be listed, so that
    each gets an outcome row. Names stay ``str`` (undecodable bytes as surrogates).
    """
    unlisted: set[str] = set()
    tree = sorted(os.walk(root, onerror=lambda exc: unlisted.add(str(exc.filename))))
    out = [str(root)] if str(root) in unlisted else []
    for folder, dirs, files in tree:
        stuck = [d for d in dirs if os.path.join(folder, d) in unlisted]
        linked = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        out += [os.path.join(folder, f) for f in sorted({*files, *stuck, *linked})]
    return out


class Unusable(Exception):
    """A path that is not a readable regular file; carries its outcome and reason."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of a regular file, or :class:`Unusable`.

    Opened non-blocking, so a FIFO never blocks; the kind is checked on the descriptor
    itself (``fstat``), so a path swapped after a check cannot slip through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        outcome, reason = _OPEN_ERRORS.get(
            exc.errno or 0, (Outcome.UNREADABLE, f"cannot be opened ({type(exc).__name__})")
        )
        raise Unusable(outcome, reason) from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    raise Unusable(*_special(path, mode))


def _special(path: str | Path, mode: int) -> tuple[Outcome, str]:
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else type(exc).__name__
            return Outcome.UNREADABLE, f"folder cannot be listed ({reason}); its files are unread"
        if os.path.islink(path):
            return Outcome.SPECIAL_FILE, "symbolic link to a folder (not followed)"
        return Outcome.SPECIAL_FILE, "a folder, not a file"
    kind = (
        "named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "special file"
    )
    return Outcome.SPECIAL_FILE, f"{kind}, not a regular file"


def side_file(path: str | Path, head: bytes) -> str:
    """Why a non-DICOM file is one of cad's own side files ('' if it is not)."""
    name = os.path.basename(path).lower()
    if name in SIDE_FILE_NAMES or name.endswith(".progress.json"):
        return "a file cad writes next to data, not an image"
    first = head.split(b"\n", 1)[0].strip().lstrip(b"\xef\xbb\xbf")
    if first.decode("utf-8", "replace") in SIDE_FILE_HEADERS:
        return "a report or label file cad writes, not an image"
    return ""


def refuse_symlink(path: str | Path | None, option: str) -> None:
    """An output is never written through a symbolic link (it would overwrite the link's
    target, wherever that is): raise CadError naming the option and the fix."""
    if path is not None and os.path.islink(path):
        from cad.errors import CadError

        raise CadError(
            f"{option} is a symbolic link; cad does not write through links (that would "
            "overwrite the file it points to): give a plain file path, or remove the link"
        )


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (or a
    rerun after a kill) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
