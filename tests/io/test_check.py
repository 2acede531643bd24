"""``cad data check``: one outcome per file, summary counts, a PHI-free report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    PATIENT_NAME,
    dicomdir,
    mr_slice,
    save,
    sr_document,
    truncated_copy,
    with_transfer_syntax,
    write_dce_study,
    write_series,
)
from pydicom.uid import generate_uid

from cad.errors import DataError
from cad.io.check import REPORT_COLUMNS, check_folder
from cad.io.outcome import Outcome
from cad.phi import Pseudonymizer

RNG = np.random.default_rng(3)


def _volumes(n: int, slices: int = 4) -> list[np.ndarray]:
    return [RNG.integers(0, 4096, (slices, 12, 12), dtype=np.uint16) for _ in range(n)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A good DCE study (3 phases + T1 + localizer = 19 files) among bad files."""
    root = tmp_path_factory.mktemp("archive")
    folders = write_dce_study(root / "PAT-001" / "study", _volumes(3), patient_id="PAT-001")
    write_dce_study(
        root / "PAT-002" / "study", _volumes(2), timing="same", patient_id="PAT-002", extras=False
    )  # 8 ambiguous-phase files
    (volume,) = _volumes(1, slices=3)
    uid, study_uid = generate_uid(), generate_uid()
    write_series(root / "dup" / "a", volume, series_uid=uid, study_uid=study_uid, seed=1)
    write_series(root / "dup" / "b", volume[:1], series_uid=uid, study_uid=study_uid, seed=2)
    good = next(folders["pre"].iterdir())
    (root / "README.txt").write_text("export notes\n")
    sr_document(root / "misc" / "sr.dcm")
    dicomdir(root / "DICOMDIR")
    truncated_copy(good, root / "misc" / "truncated.dcm", 100)
    with_transfer_syntax(good, root / "misc" / "jpegxl.dcm", "1.2.840.10008.1.2.4.110")
    broken = mr_slice(volume[0], study_uid=study_uid)
    save(broken, root / "misc" / "j2k.dcm")
    with_transfer_syntax(
        root / "misc" / "j2k.dcm", root / "misc" / "j2k.dcm", "1.2.840.10008.1.2.4.90"
    )  # header fine, codestream garbage
    return root


EXPECTED = {
    Outcome.OK: 19,
    Outcome.NOT_DICOM: 1,
    Outcome.NOT_AN_IMAGE: 2,
    Outcome.UNSUPPORTED_CODEC: 1,
    Outcome.CORRUPT: 2,
    Outcome.AMBIGUOUS_GEOMETRY: 4,
    Outcome.AMBIGUOUS_PHASE: 8,
}


def test_every_file_gets_exactly_one_outcome(archive: Path) -> None:
    result = check_folder(archive)
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert sorted(r.path for r in result.records) == sorted(files)
    assert result.summary() == {outcome: EXPECTED.get(outcome, 0) for outcome in Outcome}
    assert list(result.summary()) == list(Outcome)  # every outcome listed, zeros included
    assert not result.all_ok
    assert len(result.problems) == len(files) - EXPECTED[Outcome.OK]


def test_workers_give_the_same_outcomes(archive: Path, monkeypatch) -> None:
    monkeypatch.setattr("cad.io.check.PARALLEL_MIN_FILES", 2)
    serial = check_folder(archive)
    calls = []
    parallel = check_folder(archive, workers=2, progress=lambda d, t: calls.append((d, t)))
    assert [(r.path, r.outcome, r.reason) for r in serial.records] == [
        (r.path, r.outcome, r.reason) for r in parallel.records
    ]
    n = len(serial.records)
    assert calls[-1] == (2 * n, 2 * n) and all(d <= t for d, t in calls)


def test_report_is_pseudonymous(archive: Path, tmp_path: Path) -> None:
    result = check_folder(archive)
    pseudo = Pseudonymizer(b"test-secret")
    path = result.write_report(tmp_path / "out" / "report.csv", pseudo)
    text = path.read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert tuple(rows[0]) == REPORT_COLUMNS and len(rows) == len(result.records)
    assert {r["file_key"] for r in rows} == {pseudo.file(r.path) for r in result.records}
    assert str(archive) not in text and "PAT-0" not in text and "dcm" not in text
    assert PATIENT_NAME.split("^")[0] not in text
    for record in result.records:
        assert record.path.name == "DICOMDIR" or record.path.name not in text
    problems = result.write_report(tmp_path / "problems.csv", pseudo, only_problems=True)
    assert len(problems.read_text().splitlines()) == 1 + len(result.problems)


def test_clean_folder_is_all_ok(tmp_path: Path) -> None:
    write_dce_study(tmp_path, _volumes(2))
    result = check_folder(tmp_path)
    assert result.all_ok and result.summary()[Outcome.OK] == 2 * 4 + 4 + 3


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no files"):
        check_folder(tmp_path)
