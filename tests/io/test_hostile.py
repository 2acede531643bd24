"""Files a hostile or broken export holds: each gets one typed outcome, none hangs, crashes
the scan or is silently dropped, and the report stays writable and PHI-free."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import mr_slice, save, write_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from cad.io.check import check_folder
from cad.io.outcome import Outcome
from cad.phi import Pseudonymizer

RNG = np.random.default_rng(11)


def _slice(**kwargs) -> object:
    return mr_slice(RNG.integers(0, 4096, (12, 12), dtype=np.uint16), **kwargs)


def _outcomes(root: Path) -> dict[str, tuple[Outcome, str]]:
    result = check_folder(root)
    return {os.path.relpath(r.path, root): (r.outcome, r.reason) for r in result.records}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    write_series(tmp_path / "good", RNG.integers(0, 4096, (3, 12, 12), dtype=np.uint16))
    return tmp_path


def test_a_fifo_named_dcm_does_not_hang_the_scan(good: Path) -> None:
    os.mkfifo(good / "pipe.dcm")
    found = _outcomes(good)
    assert found["pipe.dcm"][0] is Outcome.SPECIAL_FILE and "FIFO" in found["pipe.dcm"][1]
    assert sum(o is Outcome.OK for o, _ in found.values()) == 3


def test_a_symlink_loop_and_a_dangling_link_get_outcomes(good: Path) -> None:
    os.symlink(good / "a.dcm", good / "b.dcm")
    os.symlink(good / "b.dcm", good / "a.dcm")
    os.symlink(good / "gone.dcm", good / "dangling.dcm")
    found = _outcomes(good)
    assert found["a.dcm"] == (Outcome.UNREADABLE, "symbolic link loop")
    assert found["dangling.dcm"][0] is Outcome.UNREADABLE


def test_a_non_utf8_file_name_is_reported_by_key(good: Path, tmp_path_factory) -> None:
    name = os.fsdecode(b"slice-\xff.dcm")
    save(_slice(), good / name)
    result = check_folder(good)
    assert sum(r.outcome is Outcome.OK for r in result.records) == 4
    out = tmp_path_factory.mktemp("report") / "report.csv"
    text = result.write_report(out, Pseudonymizer(b"k" * 64)).read_text()
    assert "slice-" not in text and str(good) not in text


def test_a_header_claiming_a_huge_matrix_is_refused_before_decoding(good: Path) -> None:
    save(_slice(), good / "huge.dcm")
    ds = pydicom.dcmread(good / "huge.dcm")
    ds.Rows = ds.Columns = 60000  # a few KB of file that would need GBs
    ds.save_as(good / "huge.dcm")
    outcome, reason = _outcomes(good)["huge.dcm"]
    assert outcome is Outcome.CORRUPT  # from the header alone: nothing of 7.2 GB is allocated
    assert "implausibly large" in reason or "length does not match" in reason


@pytest.mark.parametrize("slope", ["NaN", "inf"])
def test_a_non_finite_rescale_slope_is_not_treated_as_one(good: Path, slope: str) -> None:
    ds = _slice(slope=1.0)
    ds["RescaleSlope"].value = slope
    save(ds, good / "slope.dcm")
    outcome, _ = _outcomes(good)["slope.dcm"]
    assert outcome.failed


def test_same_instance_uid_with_other_pixels_is_a_conflict_not_a_silent_pick(good: Path) -> None:
    uid, study = generate_uid(), generate_uid()
    for name, seed in (("one.dcm", 1), ("two.dcm", 2)):
        ds = mr_slice(np.random.default_rng(seed).integers(0, 4096, (12, 12), dtype=np.uint16),
                      study_uid=study)  # fmt: skip
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        save(ds, good / name)
    found = _outcomes(good)
    assert found["one.dcm"][0] is Outcome.CONFLICTING_DUPLICATE
    assert found["two.dcm"][0] is Outcome.CONFLICTING_DUPLICATE


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_an_unreadable_folder_is_reported_not_skipped(good: Path) -> None:
    locked = good / "locked"
    locked.mkdir()
    save(_slice(), locked / "x.dcm")
    locked.chmod(0)
    try:
        found = _outcomes(good)
    finally:
        locked.chmod(0o755)
    assert found["locked"][0] is Outcome.UNREADABLE


def test_a_small_deflated_file_that_inflates_far_beyond_its_header_is_refused(good: Path) -> None:
    ds = _slice()
    ds.DataSetTrailingPadding = b"\x00" * (32 * 2**20)  # 32 MiB of zeros deflate to ~32 KiB
    path = save(ds, good / "bomb.dcm", syntax="deflated")
    assert path.stat().st_size < 2**20
    outcome, reason = _outcomes(good)["bomb.dcm"]
    assert outcome is Outcome.CORRUPT and "inflates to more than" in reason


# -- fuzzing: mutated copies of a valid file, each must end in exactly one typed outcome

_MUTATION = st.tuples(
    st.sampled_from(["flip", "cut", "insert", "zero-run"]),
    st.floats(0, 1, exclude_max=True),  # where, as a share of the file
    st.integers(0, 255),
)


def _mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, value in mutations:
        at = int(where * len(buf)) if buf else 0
        if op == "flip" and buf:
            buf[at] ^= value or 1
        elif op == "cut":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = bytes([value]) * (1 + value % 7)
        elif buf:
            buf[at : at + 1 + value] = bytes(min(1 + value, len(buf) - at))
    return bytes(buf)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> bytes:
    return save(_slice(), tmp_path_factory.mktemp("valid") / "x.dcm").read_bytes()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzzed_files_always_get_exactly_one_typed_outcome(valid_file, tmp_path, mutations):
    folder = tmp_path / f"fuzz-{abs(hash(tuple(mutations)))}"
    folder.mkdir()
    (folder / "f.dcm").write_bytes(_mutate(valid_file, mutations))
    records = check_folder(folder).records
    assert len(records) == 1 and isinstance(records[0].outcome, Outcome)
    assert records[0].outcome is not Outcome.PROCESSING_ERROR, records[0].reason  # never a bug


def test_data_check_over_fuzzed_files_exits_0_or_1_without_a_traceback(valid_file, tmp_path):
    from typer.testing import CliRunner

    from cad.cli import app

    rng = np.random.default_rng(5)
    for i in range(20):
        ops = [(str(rng.choice(["flip", "cut", "insert", "zero-run"])), rng.random(),
                int(rng.integers(256))) for _ in range(rng.integers(1, 4))]  # fmt: skip
        (tmp_path / f"f{i:02d}.dcm").write_bytes(_mutate(valid_file, ops))
    report = tmp_path.parent / f"{tmp_path.name}-report.csv"
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path), "--report", str(report)])
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert len(report.read_text().splitlines()) == 1 + 20
