"""The private folder retrieved studies are written to before they are scored.

::

    STAGING/                     mode 0700, marked by .cad-staging
      studies/<study key>/       complete studies only: scored as a folder
        <instance key>.dcm
      incoming/<study key>.XXXX/ a study being retrieved or received (renamed into
                                 studies/ when whole)

A study is complete or absent: it is retrieved into ``incoming/`` and renamed into
``studies/`` in one step once every instance has arrived, so a transfer that breaks off,
or a killed run, never leaves a study that counts. Staged files hold patient data.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cad.errors import CadError

MARKER = ".cad-staging"
PRIVATE = 0o700


class StagingError(CadError):
    """The staging folder cannot be used safely."""


def default_staging(out: Path) -> Path:
    """``results/predictions.csv`` -> ``results/predictions.staged``."""
    return out.with_name(f"{out.stem}.staged")


class Staging:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.studies = self.root / "studies"
        self.incoming = self.root / "incoming"

    def open(self) -> Staging:
        """Create the folder (0700) or reuse one cad made; refuse any other folder."""
        marker = self.root / MARKER
        if self.root.exists() and not marker.exists():
            if not self.root.is_dir() or any(self.root.iterdir()):
                raise StagingError(
                    f"{self.root} exists and is not a staging folder cad made; pass --staging "
                    "with a new or empty folder (cad deletes what it stages there)"
                )
        self.root.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
        if stat.S_IMODE(self.root.stat().st_mode) != PRIVATE:
            os.chmod(self.root, PRIVATE)  # staged files hold patient data: owner only
        marker.touch()
        self.studies.mkdir(exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        for leftover in self.incoming.iterdir():  # an interrupted retrieval: never counts
            shutil.rmtree(leftover, ignore_errors=True)
        return self

    def staged(self) -> set[str]:
        return {p.name for p in self.studies.iterdir() if p.is_dir()}

    def complete(self, key: str, expected: int) -> bool:
        folder = self.studies / key
        return folder.is_dir() and sum(1 for _ in folder.iterdir()) == expected

    def prune(self, keep: set[str]) -> int:
        """Delete staged studies outside ``keep`` (another query's); return how many."""
        gone = sorted(self.staged() - keep)
        for key in gone:
            shutil.rmtree(self.studies / key)
        return len(gone)

    @contextmanager
    def receive(self, key: str) -> Iterator[Path]:
        """A fresh folder for one study; published into ``studies/`` when the block
        finishes, deleted when it raises."""
        tmp = self.begin(key)
        try:
            yield tmp
            self.publish(tmp, key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def begin(self, key: str) -> Path:
        """A fresh folder in ``incoming/`` for a study that is arriving."""
        return Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.incoming))

    def publish(self, tmp: Path, key: str, merge: bool = False) -> Path:
        """Rename ``tmp`` into ``studies/<key>`` in one step. A staged copy already there
        is replaced (a retrieval: the PACS has more now) or, with ``merge`` (a receiver:
        more instances of the study arrived), joined file by file."""
        target = self.studies / key
        if target.exists() and merge:
            for path in tmp.iterdir():
                os.replace(path, target / path.name)
            shutil.rmtree(tmp)
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    def delete(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
