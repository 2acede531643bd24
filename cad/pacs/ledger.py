"""The outputs of ``cad listen``: predictions and errors CSVs that grow by one scored study
at a time, and the record that makes a restart resume exactly.

Each study is scored by :func:`cad.scoring.api.score_folder` into files of its own, whose
rows (without the header) are then appended to ``--out`` and the errors CSV; after that,
``<out>.listen.json`` records the byte length of both files and the study's key, written
atomically. A restart truncates both files to the recorded lengths (dropping a study that
was half appended when the process died) and skips the recorded studies, so a study is in
the outputs exactly once (the ``cad score`` resume rule, per study instead of per patient).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cad.errors import CadError
from cad.io.files import replace_text
from cad.scoring.writers import ERROR_COLUMNS, PREDICTION_COLUMNS, csv_bytes

LEDGER_FORMAT = "cad-listen/1"


def ledger_path(out: Path) -> Path:
    return out.with_name(out.name + ".listen.json")


def _rows(path: Path) -> bytes:
    """A CSV file's bytes without its header line."""
    data = path.read_bytes() if path.is_file() else b""
    return data.split(b"\n", 1)[1] if b"\n" in data else b""


@dataclass
class Ledger:
    """Which studies the outputs hold, and the fingerprint every later study must match."""

    out: Path
    errors: Path
    fingerprint: dict
    scored: dict[str, dict] = field(default_factory=dict)  # study key -> counts
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return ledger_path(self.out)

    def open(self) -> Ledger:
        """Start the outputs, or continue the ones a previous listener wrote."""
        if not self.path.is_file():
            for name, path in (("--out", self.out), ("--errors", self.errors)):
                if path.exists():
                    raise CadError(
                        f"{name} {path} exists but was not written by cad listen (no "
                        f"{self.path.name} beside it); pass a new file, or move it away"
                    )
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_bytes(csv_bytes([PREDICTION_COLUMNS]))
            self.errors.write_bytes(csv_bytes([ERROR_COLUMNS]))
            self._commit()
            return self
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("format") != LEDGER_FORMAT:
            raise CadError(f"{self.path} is not a cad listen record; pass a new --out")
        if saved["fingerprint"] != self.fingerprint:
            changed = sorted(
                k
                for k in {*saved["fingerprint"], *self.fingerprint}
                if saved["fingerprint"].get(k) != self.fingerprint.get(k)
            )
            raise CadError(
                f"{self.out} was written with a different {', '.join(changed)} (model, "
                "--level or --dicom-out); pass a new --out to score with these options"
            )
        for name, path in (("predictions", self.out), ("errors", self.errors)):
            length = saved["offsets"][name]
            if not path.is_file() or path.stat().st_size < length:
                raise CadError(
                    f"{path} is missing or shorter than {self.path} records; restore it "
                    "or pass a new --out"
                )
            with open(path, "r+b") as handle:
                handle.truncate(length)  # a study half appended when the process died
        self.scored, self.offsets = saved["scored"], saved["offsets"]
        return self

    def append(self, key: str, predictions: Path, errors: Path, counts: dict) -> None:
        """Append one study's rows, then record it (the order that makes resume exact)."""
        for _name, target, source in (
            ("predictions", self.out, predictions),
            ("errors", self.errors, errors),
        ):
            with open(target, "ab") as handle:
                handle.write(_rows(source))
                handle.flush()
                os.fsync(handle.fileno())
        self.scored[key] = counts
        self._commit()

    def _commit(self) -> None:
        self.offsets = {
            "predictions": self.out.stat().st_size,
            "errors": self.errors.stat().st_size,
        }
        record = {
            "format": LEDGER_FORMAT,
            "fingerprint": self.fingerprint,
            "offsets": self.offsets,
            "scored": self.scored,
        }
        replace_text(self.path, json.dumps(record, indent=1, sort_keys=True))
