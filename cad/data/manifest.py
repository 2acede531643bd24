"""Manifests: one CSV row per sample, validated on read; builders from label sources.

Schema (see data_manifests/README.md): ``patient_id,path,series,slice_index,label``.
``path`` is relative to the data root with ``/`` separators: a study folder for series
``dce``, a series folder for series ``single``. ``slice_index`` is 0-based along the
sorted volume (empty: every slice, each with the row's label). ``label`` is 0 or 1.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from cad.errors import DataError, did_you_mean
from cad.io.header import FileRecord
from cad.io.index import index_folder
from cad.io.reader import read_folder, read_records
from cad.io.study import Study
from cad.phi import Pseudonymizer, load_secret

log = logging.getLogger(__name__)

COLUMNS = ("patient_id", "path", "series", "slice_index", "label")
SERIES_KINDS = ("dce", "single")
_MAX_ERRORS = 20


@dataclass(frozen=True)
class ManifestRow:
    patient_id: str
    path: str  # relative to the data root, POSIX separators
    series: str  # "dce" (path = study folder) or "single" (path = series folder)
    slice_index: int | None  # 0-based along the sorted volume; None = every slice
    label: int


@dataclass(frozen=True)
class Skipped:
    """A patient or label row left out of a built manifest (pseudonymous, PHI-free)."""

    patient: str
    reason: str
    line: int | None = None  # line of the label file, where the source is one


class BuiltManifest(list):
    """The rows of a built manifest, plus what was skipped and why."""

    def __init__(self, rows: Iterable[ManifestRow] = (), skipped: list[Skipped] | None = None):
        super().__init__(rows)
        self.skipped: list[Skipped] = skipped or []

    def skipped_summary(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())


# ----------------------------------------------------------------------------- read/write


def _path_problem(value: str) -> str:
    if not value:
        return "path is empty"
    if "\\" in value:
        return "path uses '\\' separators; write it with '/'"
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        return "path is absolute; make it relative to the data root"
    if ".." in PurePosixPath(value).parts:
        return "path leaves the data root ('..'); make it relative to the data root"
    return ""


def _read_rows(path: Path, required: tuple[str, ...], example: str) -> Iterable[tuple[int, dict]]:
    """(line number, row) for each CSV row; raises when the file or its header is wrong."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; {example}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{path}: line 1: missing column(s) {', '.join(missing)}; the header must "
                f"read {','.join(required)}"
            )
        for row in reader:
            yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def _raise_errors(path: Path, errors: list[str]) -> None:
    if errors:
        more = f"\n  ... and {len(errors) - _MAX_ERRORS} more" if len(errors) > _MAX_ERRORS else ""
        raise DataError(f"{path}: invalid manifest\n  " + "\n  ".join(errors[:_MAX_ERRORS]) + more)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest; errors name the file, the line and the fix."""
    path = Path(path)
    example = "build one with `cad data manifest` (see data_manifests/README.md)"
    rows, errors = [], []
    seen: dict[tuple, int] = {}
    first_of: dict[tuple, int] = {}
    owner: dict[str, tuple[str, int]] = {}
    for line, raw in _read_rows(path, COLUMNS, example):
        problems = []
        if not raw["patient_id"]:
            problems.append("patient_id is empty")
        if problem := _path_problem(raw["path"]):
            problems.append(problem)
        if raw["series"] not in SERIES_KINDS:
            hint = did_you_mean(raw["series"], SERIES_KINDS)
            problems.append(f"series must be 'dce' or 'single';{hint}")
        index = raw["slice_index"]
        if index and not (index.isascii() and index.isdigit()):
            problems.append("slice_index must be a whole number >= 0, or empty for every slice")
        if raw["label"] not in ("0", "1"):
            problems.append("label must be 0 or 1")
        if problems:
            errors += [f"line {line}: {p}" for p in problems]
            continue
        row = ManifestRow(
            raw["patient_id"],
            raw["path"],
            raw["series"],
            int(index) if index else None,
            int(raw["label"]),
        )
        key, sample = (row.path, row.series), (row.path, row.series, row.slice_index)
        first = seen.get(sample) or seen.get((*key, None))
        if first is None and row.slice_index is None:
            first = first_of.get(key)
        if first is not None:
            errors.append(
                f"line {line}: repeats a sample of line {first} (same path and series, and the "
                "same slice_index or an empty one, which means every slice); remove one"
            )
        previous = owner.setdefault(row.path, (row.patient_id, line))
        if previous[0] != row.patient_id:
            errors.append(
                f"line {line}: path already belongs to another patient_id (line {previous[1]})"
            )
        seen.setdefault(sample, line)
        first_of.setdefault(key, line)
        rows.append(row)
    if not rows and not errors:
        errors.append("no rows; a manifest needs at least one sample")
    _raise_errors(path, errors)
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write a manifest CSV atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in rows:
                index = "" if row.slice_index is None else row.slice_index
                writer.writerow([row.patient_id, row.path, row.series, index, row.label])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- builders


@dataclass
class _Archive:
    """Studies of a DICOM root assembled from headers only (no pixel decoding)."""

    root: Path
    by_patient: dict[str, list[Study]] = field(default_factory=lambda: defaultdict(list))
    records: list[FileRecord] = field(default_factory=list)

    @classmethod
    def index(cls, root: Path, workers: int) -> _Archive:
        read = read_records(index_folder(root, workers=workers))
        archive = cls(Path(root), records=read.records)
        for study in read.studies:
            archive.by_patient[study.patient_id].append(study)
        return archive

    def relative(self, folder: Path) -> str:
        return Path(os.path.relpath(folder, self.root)).as_posix()


def _box_columns(path: Path) -> Iterable[tuple[int, str, int, int]]:
    """(line, patient id, start slice, end slice) from a Duke Annotation_Boxes CSV."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        raise DataError(f"{path}: a spreadsheet; export it as CSV (File > Save as > CSV) first")
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass Duke's Annotation_Boxes.csv")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [re.sub(r"[^a-z]", "", h.lower()) for h in next(reader, [])]
        want = {"patientid": "Patient ID", "startslice": "Start Slice", "endslice": "End Slice"}
        missing = [name for key, name in want.items() if key not in header]
        if missing:
            raise DataError(
                f"{path}: line 1: missing column(s) {', '.join(missing)}; expected Duke's "
                "header: Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice"
            )
        cols = [header.index(k) for k in want]
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            pid, start, end = (row[c].strip() if c < len(row) else "" for c in cols)
            if not (pid and start.isdigit() and end.isdigit() and 1 <= int(start) <= int(end)):
                raise DataError(
                    f"{path}: line {reader.line_num}: needs a Patient ID and 1 <= Start Slice "
                    "<= End Slice (whole numbers, 1-based)"
                )
            yield reader.line_num, pid, int(start), int(end)


def _dce_study(studies: list[Study]) -> Study | str:
    dce = [s for s in studies if s.phases]
    if len(dce) == 1:
        return dce[0]
    if dce:
        return f"{len(dce)} studies with DCE phases; keep one per patient"
    problems = sorted({s.phase_problem for s in studies if s.phase_problem})
    return f"ambiguous-phase: {problems[0]}" if problems else "no DCE study found"


def _positives(study: Study, boxes: list[tuple[int, int]], numbering: str) -> set[int]:
    """0-based indices along the sorted volume of the box slices (1-based, inclusive)."""
    slices = range(len(study.phases["pre"].frames))
    if numbering == "position":
        order = list(slices)
    else:
        numbers = [f.record.instance_number for f in study.phases["pre"].frames]
        if None in numbers or len(set(numbers)) != len(numbers):
            raise ValueError("InstanceNumber missing or repeated in the pre-contrast series")
        order = sorted(slices, key=lambda i: numbers[i])  # k-th instance -> its position
    return {order[k - 1] for start, end in boxes for k in range(start, end + 1)}


def build_from_boxes(
    dicom_root: str | Path,
    boxes_csv: str | Path,
    margin: int = 5,
    unboxed: Literal["skip", "negative"] = "skip",
    *,
    numbering: Literal["position", "instance"] = "position",
    workers: int = 1,
    pseudonymizer: Pseudonymizer | None = None,
) -> BuiltManifest:
    """Slice labels from Duke-style boxes: positive inside [Start, End] Slice (1-based,
    inclusive), negative at least ``margin`` slices away, the slices between left out.

    Only headers are read. ``numbering`` says how the boxes count slices: "position"
    (along the volume sorted by ImagePositionPatient) or "instance" (by InstanceNumber).
    Patients whose study is missing or ambiguous are skipped and listed in ``.skipped``.
    """
    if unboxed not in ("skip", "negative") or numbering not in ("position", "instance"):
        raise DataError("unboxed must be 'skip' or 'negative'; numbering 'position' or 'instance'")
    if margin < 0:
        raise DataError(f"margin must be >= 0 slices (got {margin})")
    boxes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for _, pid, start, end in _box_columns(Path(boxes_csv)):
        boxes[pid].append((start, end))
    pseudo = pseudonymizer or Pseudonymizer(load_secret())
    archive = _Archive.index(Path(dicom_root), workers)
    out = BuiltManifest()
    for pid in sorted(set(boxes) - set(archive.by_patient)):
        out.skipped.append(Skipped(pseudo.patient(pid), "in the boxes file, not in the archive"))
    for pid, studies in archive.by_patient.items():
        if pid not in boxes and unboxed == "skip":
            out.skipped.append(Skipped(pseudo.patient(pid), "no box row (unboxed='skip')"))
            continue
        study = _dce_study(studies)
        if isinstance(study, str):
            out.skipped.append(Skipped(pseudo.patient(pid), study))
            continue
        count = len(study.phases["pre"].frames)
        if any(end > count for _, end in boxes.get(pid, [])):
            reason = "box slices beyond the DCE volume (check the slice numbering)"
            out.skipped.append(Skipped(pseudo.patient(pid), reason))
            continue
        try:
            positives = _positives(study, boxes.get(pid, []), numbering)
        except ValueError as exc:
            out.skipped.append(Skipped(pseudo.patient(pid), str(exc)))
            continue
        path = archive.relative(study.folder)
        for i in range(count):
            if i in positives:
                out.append(ManifestRow(pid, path, "dce", i, 1))
            elif all(abs(i - p) >= margin for p in positives):
                out.append(ManifestRow(pid, path, "dce", i, 0))
    _log(out, "boxes")
    return out


def build_from_series_labels(
    dicom_root: str | Path,
    labels_csv: str | Path,
    *,
    pseudonymizer: Pseudonymizer | None = None,
) -> BuiltManifest:
    """Series-level labels from a CSV ``patient_id,path,label`` (path: a series folder).

    Each folder is indexed (headers only) and must hold exactly one usable volume of the
    named patient; rows that do not are skipped and listed in ``.skipped``.
    """
    root, labels_csv = Path(dicom_root), Path(labels_csv)
    pseudo = pseudonymizer or Pseudonymizer(load_secret())
    out, errors = BuiltManifest(), []
    example = "it needs the columns patient_id,path,label (path: a series folder)"
    for line, raw in _read_rows(labels_csv, ("patient_id", "path", "label"), example):
        problem = _path_problem(raw["path"]) or (
            "" if raw["label"] in ("0", "1") else "label must be 0 or 1"
        )
        if problem or not raw["patient_id"]:
            errors.append(f"line {line}: {problem or 'patient_id is empty'}")
            continue
        folder, who = root / raw["path"], pseudo.patient(raw["patient_id"])
        if not folder.is_dir():
            out.skipped.append(Skipped(who, "series folder not found", line))
            continue
        units = [u for study in read_folder(folder).studies for u in study.series]
        if len(units) != 1:
            reason = "folder does not hold exactly one usable volume"
            out.skipped.append(Skipped(who, reason, line))
        elif units[0].patient_id != raw["patient_id"]:
            reason = "patient_id differs from the files' PatientID"
            out.skipped.append(Skipped(who, reason, line))
        else:
            path = PurePosixPath(raw["path"]).as_posix()
            out.append(ManifestRow(raw["patient_id"], path, "single", None, int(raw["label"])))
    _raise_errors(labels_csv, errors)
    _log(out, "series labels")
    return out


def _log(out: BuiltManifest, source: str) -> None:
    """Log what was built; refuse a manifest nothing can be trained on (no rows, or one
    class only), naming why the rows were skipped."""
    skipped = "; ".join(f"{n} skipped: {why}" for why, n in out.skipped_summary().items())
    labels = {r.label for r in out}
    if labels != {0, 1}:
        what = "no rows" if not labels else f"only label {labels.pop()} rows"
        raise DataError(
            f"the manifest from {source} has {what} ({skipped or 'nothing was skipped'}); "
            "check that the labels file's patient IDs match the archive's PatientID and "
            "that its slice numbers lie inside the volumes"
        )
    patients = len({r.patient_id for r in out})
    log.info("manifest from %s: %d rows, %d patients", source, len(out), patients)
    for reason, count in out.skipped_summary().items():
        log.warning("skipped %d: %s", count, reason)
