"""Output files of ``cad score`` and the resume sidecar.

Rows are appended as bytes and flushed after every finished patient; then the sidecar
``<predictions>.progress.json`` records the byte length of each file, how many patients
(in output order) are finished and the running counts, written atomically. A resumed run
truncates each file to the recorded length (dropping a half-written patient) and skips
the finished patients, so its files equal an uninterrupted run's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cad.errors import CadError
from cad.io.files import replace_text

PREDICTION_COLUMNS = (
    "level",
    "patient",
    "study",
    "series",
    "instance",
    "slice",
    "sample",
    "probability",
    "label",
    "slices",
    "positive_slices",
    "max_probability",
    "mean_probability",
)
ERROR_COLUMNS = ("file", "outcome", "reason")
KEY_MAP_COLUMNS = ("pseudonym", "identifier_kind", "identifier")
SEGMENT_COLUMNS = ("patient", "predictions", "errors", "key_map")  # end offsets after it
SIDECAR_FORMAT = "cad-score-progress/1"


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def segments_path(out: Path) -> Path:
    """A shard's byte ranges per patient, what ``cad score merge`` interleaves."""
    return out.with_name(out.name + ".segments.csv")


def csv_bytes(rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


@dataclass
class State:
    """What the sidecar remembers: finished patients and running counts."""

    patients_done: int = 0
    last_patient: str = ""
    counts: dict[str, Any] | None = None
    header_done: bool = False
    complete: bool = False


class Outputs:
    """predictions.csv, errors.csv and the optional key map, opened fresh or for resume."""

    def __init__(
        self,
        predictions: Path,
        errors: Path,
        key_map: Path | None,
        fingerprint: dict[str, Any],
        resume: bool,
        segments: bool = False,
    ) -> None:
        self.paths = {"predictions": predictions, "errors": errors}
        if key_map is not None:
            self.paths["key_map"] = key_map
        if segments:  # a shard: record where each patient's rows end in every file
            self.paths["segments"] = segments_path(predictions)
        self.sidecar = sidecar_path(predictions)
        self.fingerprint = fingerprint
        self.state = State()
        self.resumed = False
        saved = self._saved() if resume else None
        if saved is not None:
            self._reopen(saved)
        else:
            self._create()

    # -- opening

    def _saved(self) -> dict[str, Any] | None:
        if not self.sidecar.is_file():
            return None
        try:
            saved = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("format") != SIDECAR_FORMAT:
            raise CadError(
                f"{self.sidecar} is not a cad score progress file; delete it or "
                "rerun without --resume"
            )
        if saved.get("fingerprint") != self.fingerprint:
            before = saved.get("fingerprint", {})
            changed = sorted(  # a key of either run: an option given to only one counts
                k for k in {*self.fingerprint, *before} if before.get(k) != self.fingerprint.get(k)
            )
            raise CadError(
                "--resume: the interrupted run used a different "
                f"{', '.join(changed) or 'configuration'} (model, folder contents, --level, "
                "--key-map, --cam or --dicom-out); rerun without --resume to start over"
            )
        return saved

    def _reopen(self, saved: dict[str, Any]) -> None:
        self.files = {}
        for name, path in self.paths.items():
            length = saved["offsets"].get(name)
            if length is None or not path.is_file() or path.stat().st_size < length:
                raise CadError(
                    f"--resume: {path} is missing or shorter than {self.sidecar} "
                    "records; rerun without --resume to start over"
                )
            handle = open(path, "r+b")  # noqa: SIM115 - closed in close()
            handle.truncate(length)
            handle.seek(length)
            self.files[name] = handle
        self.state = State(
            saved["patients_done"],
            saved["last_patient"],
            saved["counts"],
            saved["header_done"],
            saved["complete"],
        )
        self.resumed = True

    def _create(self) -> None:
        self.sidecar.unlink(missing_ok=True)
        self.files = {}
        headers = {
            "predictions": PREDICTION_COLUMNS,
            "errors": ERROR_COLUMNS,
            "key_map": KEY_MAP_COLUMNS,
            "segments": SEGMENT_COLUMNS,
        }
        for name, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == "key_map":  # holds PHI: readable by the owner only
                path.unlink(missing_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                handle = os.fdopen(fd, "wb")
            else:
                handle = open(path, "wb")  # noqa: SIM115 - closed in close()
            handle.write(csv_bytes([headers[name]]))
            self.files[name] = handle

    # -- writing

    def write(self, name: str, rows: Iterable[Sequence[Any]]) -> None:
        handle = self.files.get(name)
        if handle is not None:
            handle.write(csv_bytes(rows))

    def commit(self, state: State) -> None:
        """Flush every file, then record their lengths and ``state`` in the sidecar."""
        offsets = {}
        for name, handle in self.files.items():
            handle.flush()  # enough for a killed process; after a power cut the length
            offsets[name] = handle.tell()  # check in _reopen catches a lost tail
        segments = self.files.get("segments")
        new_header = state.header_done and not self.state.header_done
        if segments is not None and (new_header or state.patients_done > self.state.patients_done):
            patient = state.last_patient if state.patients_done else ""  # "": the header
            ends = [offsets.get(name, 0) for name in SEGMENT_COLUMNS[1:]]
            segments.write(csv_bytes([(patient, *ends)]))
            segments.flush()
            offsets["segments"] = segments.tell()
        self.state = state
        record = {
            "format": SIDECAR_FORMAT,
            "fingerprint": self.fingerprint,
            "offsets": offsets,
            "patients_done": state.patients_done,
            "last_patient": state.last_patient,
            "counts": state.counts,
            "header_done": state.header_done,
            "complete": state.complete,
        }
        replace_text(self.sidecar, json.dumps(record, indent=1, sort_keys=True))

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files = {}
