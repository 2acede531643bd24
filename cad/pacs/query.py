"""Which studies to fetch: a study date range, an accession list or a patient pseudonym map.

- ``--study-date 20250101-20250131`` (or one date, ``20250101``): DICOM's date range form.
- ``--accessions FILE``: one AccessionNumber per line; blank lines and ``#`` comments are
  ignored; an optional first line ``AccessionNumber`` is a header.
- ``--patients FILE``: a CSV mapping pseudonyms to PatientIDs, either with the header
  ``pseudonym,patient_id`` or the key map ``cad score --key-map`` writes
  (``pseudonym,identifier_kind,identifier``; its ``PatientID`` rows are used).

Each query becomes one or more C-FIND / QIDO-RS filters. A filter's ``label`` is what logs
and the transfer report may show: a date range, a line number or a pseudonym, never an
accession number or patient ID.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cad.pacs.errors import PacsQueryError

KEY_MAP_HEADER = ["pseudonym", "identifier_kind", "identifier"]
PATIENT_MAP_HEADER = ["pseudonym", "patient_id"]


@dataclass(frozen=True)
class StudyFilter:
    """One query to the PACS: DICOM keyword -> matching value, and a PHI-free label."""

    keys: tuple[tuple[str, str], ...]
    label: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.keys)


def _date(text: str) -> dt.date:
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise PacsQueryError(
            f"--study-date '{text}' is not a date YYYYMMDD; e.g. --study-date 20250101-20250131"
        ) from None


def date_range(text: str) -> list[StudyFilter]:
    """``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD`` (inclusive) -> one filter on StudyDate."""
    first, _, last = text.strip().partition("-")
    start, end = _date(first), _date(last or first)
    if end < start:
        raise PacsQueryError(
            f"--study-date '{text}' ends before it starts; write the earlier date first"
        )
    value = first if not last else f"{first}-{last}"
    return [StudyFilter((("StudyDate", value),), f"study date {value}")]


def _lines(path: Path, option: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        raise PacsQueryError(
            f"{option} {path} cannot be read as a UTF-8 text file; pass the file's path"
        ) from None


def accessions(path: str | Path) -> list[StudyFilter]:
    """One filter per distinct accession number in ``path`` (file order)."""
    path = Path(path)
    found: dict[str, int] = {}
    for number, line in enumerate(_lines(path, "--accessions"), start=1):
        value = line.split("#", 1)[0].strip()
        if not value or (number == 1 and value.lower() in ("accessionnumber", "accession")):
            continue
        if len(value) > 16 or any(c in value for c in "\\*?"):
            raise PacsQueryError(
                f"--accessions {path}, line {number}: not an accession number (at most 16 "
                "characters, no wildcards or backslash); one accession number per line"
            )
        found.setdefault(value, number)
    if not found:
        raise PacsQueryError(f"--accessions {path} lists no accession numbers; one per line")
    return [
        StudyFilter((("AccessionNumber", value),), f"accession on line {number}")
        for value, number in found.items()
    ]


def patients(path: str | Path) -> list[StudyFilter]:
    """One filter per patient in a pseudonym map (``pseudonym,patient_id`` or a key map)."""
    path = Path(path)
    rows = list(csv.reader(_lines(path, "--patients")))
    header = [c.strip() for c in rows[0]] if rows else []
    if header == PATIENT_MAP_HEADER:
        pairs = [(r[0].strip(), r[1].strip()) for r in rows[1:] if len(r) >= 2]
    elif header == KEY_MAP_HEADER:
        pairs = [
            (r[0].strip(), r[2].strip()) for r in rows[1:] if len(r) >= 3 and r[1] == "PatientID"
        ]
    else:
        raise PacsQueryError(
            f"--patients {path} has neither the header 'pseudonym,patient_id' nor that of a "
            "cad key map ('pseudonym,identifier_kind,identifier'); write one patient per row "
            "under the header pseudonym,patient_id"
        )
    found = {pid: pseudonym for pseudonym, pid in reversed(pairs) if pid}
    if not found:
        raise PacsQueryError(
            f"--patients {path} maps no patients; one pseudonym,patient_id per row"
        )
    ordered = sorted(found.items(), key=lambda item: item[1])
    return [
        StudyFilter((("PatientID", pid),), f"patient {pseudonym}") for pid, pseudonym in ordered
    ]


def build_query(
    study_date: str | None, accession_file: Path | None, patient_file: Path | None
) -> list[StudyFilter]:
    """Exactly one of the three query forms -> its filters."""
    given = [v is not None for v in (study_date, accession_file, patient_file)]
    if sum(given) != 1:
        raise PacsQueryError(
            "with --pacs, say which studies to score with exactly one of --study-date "
            "YYYYMMDD-YYYYMMDD, --accessions FILE or --patients FILE"
        )
    if study_date is not None:
        return date_range(study_date)
    if accession_file is not None:
        return accessions(accession_file)
    assert patient_file is not None
    return patients(patient_file)
