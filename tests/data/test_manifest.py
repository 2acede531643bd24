"""Manifests: validation with file/line/fix, and the builders from boxes and series labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_dce_study, write_series

from cad.data.manifest import (
    COLUMNS,
    ManifestRow,
    build_from_boxes,
    build_from_series_labels,
    read_manifest,
    write_manifest,
)
from cad.errors import DataError
from cad.phi import Pseudonymizer

PSEUDO = Pseudonymizer(b"test-secret")
RNG = np.random.default_rng(4)
SLICES = 12


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_valid_manifest(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.csv",
        [
            ",".join(COLUMNS),
            "Breast_MRI_001,Breast_MRI_001/study,dce,0,0",
            "Breast_MRI_001,Breast_MRI_001/study,dce,5,1",
            "Breast_MRI_002,Breast_MRI_002/study/series3,single,,1",
        ],
    )
    rows = read_manifest(path)
    assert rows[1] == ManifestRow("Breast_MRI_001", "Breast_MRI_001/study", "dce", 5, 1)
    assert rows[2].slice_index is None and rows[2].series == "single"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("P1,/data/P1/study,dce,0,1", "line 2: path is absolute; make it relative"),
        ("P1,P1\\study,dce,0,1", "line 2: path uses '\\\\' separators"),
        ("P1,../P1/study,dce,0,1", "line 2: path leaves the data root"),
        ("P1,P1/study,dce,0,yes", "line 2: label must be 0 or 1"),
        ("P1,P1/study,dec,0,1", "line 2: series must be 'dce' or 'single'; did you mean 'dce'"),
        ("P1,P1/study,dce,-1,1", "line 2: slice_index must be a whole number"),
        (",P1/study,dce,0,1", "line 2: patient_id is empty"),
    ],
)
def test_invalid_rows_name_file_line_and_fix(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "m.csv", [",".join(COLUMNS), line])
    with pytest.raises(DataError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_columns_and_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", ["patient_id,path,label", "P1,P1/s,1"])
    with pytest.raises(DataError, match="line 1: missing column.s. series, slice_index"):
        read_manifest(path)
    path = _write(
        tmp_path / "d.csv",
        [
            ",".join(COLUMNS),
            "P1,P1/s,dce,3,1",
            "P1,P1/s,dce,4,1",
            "P1,P1/s,dce,3,0",
            "P1,P1/s,dce,,0",
            "P2,P1/s,single,,1",
        ],
    )
    with pytest.raises(DataError) as info:
        read_manifest(path)
    text = str(info.value)
    assert "line 4: repeats a sample of line 2" in text
    assert "line 5: repeats a sample of line 2" in text  # empty slice_index = every slice
    assert "line 6: path already belongs to another patient_id (line 2)" in text
    assert "P2" not in text  # no patient identifiers in the message


def test_write_read_round_trip(tmp_path: Path) -> None:
    rows = [ManifestRow("P1", "P1/study", "dce", i, i % 2) for i in range(4)]
    rows.append(ManifestRow("P2", "P2/study/s1", "single", None, 1))
    assert read_manifest(write_manifest(rows, tmp_path / "sub" / "m.csv")) == rows


@pytest.fixture(scope="module")
def duke(tmp_path_factory) -> Path:
    """Duke layout: patient / study / series folders; P3's phases cannot be ordered."""
    root = tmp_path_factory.mktemp("duke")

    def volumes(n: int) -> list[np.ndarray]:
        return [RNG.integers(0, 4096, (SLICES, 8, 8), dtype=np.uint16) for _ in range(n)]

    for pid in ("Breast_MRI_001", "Breast_MRI_002"):
        write_dce_study(root / pid / "01-01-1990-MRI BREAST", volumes(3), patient_id=pid)
    write_dce_study(
        root / "Breast_MRI_003" / "st", volumes(2), timing="same", patient_id="Breast_MRI_003"
    )
    return root


def _boxes(tmp_path: Path, rows: list[str]) -> Path:
    header = "Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice"
    return _write(tmp_path / "Annotation_Boxes.csv", [header, *rows])


def test_build_from_boxes_margins_and_skips(duke: Path, tmp_path: Path) -> None:
    boxes = _boxes(
        tmp_path,
        [
            "Breast_MRI_001,10,20,30,40,4,5",  # 1-based inclusive -> 0-based 3..4
            "Breast_MRI_003,1,2,3,4,2,2",
            "Breast_MRI_404,1,2,3,4,2,2",
        ],
    )
    rows = build_from_boxes(duke, boxes, margin=2, pseudonymizer=PSEUDO)
    labels = {r.slice_index: r.label for r in rows if r.patient_id == "Breast_MRI_001"}
    assert [i for i, y in labels.items() if y == 1] == [3, 4]
    assert sorted(i for i, y in labels.items() if y == 0) == [0, 1, *range(6, SLICES)]
    assert 2 not in labels and 5 not in labels  # closer than the margin: left out
    assert {r.path for r in rows} == {"Breast_MRI_001/01-01-1990-MRI BREAST"}
    assert all(r.series == "dce" for r in rows)
    reasons = {s.patient: s.reason for s in rows.skipped}
    assert reasons[PSEUDO.patient("Breast_MRI_002")].startswith("no box row")
    assert reasons[PSEUDO.patient("Breast_MRI_003")].startswith("ambiguous-phase: ")
    assert reasons[PSEUDO.patient("Breast_MRI_404")] == "in the boxes file, not in the archive"
    assert not any("Breast" in s.patient or "Breast" in s.reason for s in rows.skipped)
    assert read_manifest(write_manifest(rows, tmp_path / "m.csv")) == list(rows)


def test_unboxed_patients_can_be_all_negative(duke: Path, tmp_path: Path) -> None:
    boxes = _boxes(tmp_path, ["Breast_MRI_001,10,20,30,40,1,1"])
    rows = build_from_boxes(duke, boxes, margin=0, unboxed="negative", pseudonymizer=PSEUDO)
    second = [r for r in rows if r.patient_id == "Breast_MRI_002"]
    assert len(second) == SLICES and {r.label for r in second} == {0}
    first = [r.label for r in rows if r.patient_id == "Breast_MRI_001"]
    assert first == [1] + [0] * (SLICES - 1)  # margin 0: every other slice is negative


def test_box_numbering_by_instance(duke: Path, tmp_path: Path) -> None:
    # the factory writes InstanceNumber backwards along the normal: instance 1 = last slice
    boxes = _boxes(tmp_path, ["Breast_MRI_001,1,2,3,4,1,2"])
    rows = build_from_boxes(duke, boxes, margin=1, numbering="instance", pseudonymizer=PSEUDO)
    positives = sorted(r.slice_index for r in rows if r.label == 1)
    assert positives == [SLICES - 2, SLICES - 1]


def test_box_beyond_the_volume_fails_loudly_with_the_reason(duke: Path, tmp_path: Path) -> None:
    boxes = _boxes(tmp_path, [f"Breast_MRI_001,1,2,3,4,{SLICES},{SLICES + 1}"])
    with pytest.raises(
        DataError, match="has no rows .*1 skipped: box slices beyond the DCE volume"
    ):
        build_from_boxes(duke, boxes, pseudonymizer=PSEUDO)


def test_boxes_matching_no_archive_patient_fail_loudly(duke: Path, tmp_path: Path) -> None:
    boxes = _boxes(tmp_path, ["Someone_Else,1,2,3,4,1,2"])
    with pytest.raises(DataError, match="patient IDs match the archive") as caught:
        build_from_boxes(duke, boxes, pseudonymizer=PSEUDO, unboxed="negative")
    assert "only label 0 rows" in str(caught.value) and "Someone_Else" not in str(caught.value)


def test_bad_boxes_file(tmp_path: Path, duke: Path) -> None:
    with pytest.raises(DataError, match="missing column.s. Start Slice"):
        build_from_boxes(duke, _write(tmp_path / "b.csv", ["Patient ID,End Slice", "P,1"]))
    with pytest.raises(DataError, match="line 2: needs a Patient ID and 1 <= Start Slice"):
        build_from_boxes(duke, _boxes(tmp_path, ["P,1,2,3,4,5,2"]))
    with pytest.raises(DataError, match="export it as CSV"):
        build_from_boxes(duke, tmp_path / "Annotation_Boxes.xlsx")


def test_build_from_series_labels(tmp_path: Path) -> None:
    volume = RNG.integers(0, 4096, (5, 8, 8), dtype=np.uint16)
    write_series(tmp_path / "A" / "st" / "t2", volume, patient_id="A", description="ax t2")
    write_series(tmp_path / "B" / "st" / "t2", volume, patient_id="B", description="ax t2")
    labels = _write(
        tmp_path / "labels.csv",
        [
            "patient_id,path,label",
            "A,A/st/t2,1",
            "B,A/st/t2,0",
            "C,C/none,0",
            "B,B/st/t2,0",
        ],
    )
    rows = build_from_series_labels(tmp_path, labels, pseudonymizer=PSEUDO)
    assert list(rows) == [
        ManifestRow("A", "A/st/t2", "single", None, 1),
        ManifestRow("B", "B/st/t2", "single", None, 0),
    ]
    assert [(s.line, s.reason) for s in rows.skipped] == [
        (3, "patient_id differs from the files' PatientID"),
        (4, "series folder not found"),
    ]
