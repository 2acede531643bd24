"""Files a hostile or broken export holds: each gets one typed outcome, none hangs, crashes
the scan or is silently dropped, and the report stays writable and PHI-free."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import mr_slice, save, write_series
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
