"""Per-file reading: typed outcomes, PHI-free reasons, decoding of every available codec."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    LOSSLESS,
    NATIVE,
    PATIENT_NAME,
    dicomdir,
    enhanced_mr,
    mr_slice,
    save,
    sr_document,
    truncated_copy,
    with_transfer_syntax,
)
from pydicom.pixels import get_encoder

from cad.io import CodecError, CorruptError, Outcome, decode, read_header
from cad.io.index import index_folder

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 4096, (32, 40), dtype=np.uint16)  # 12-bit stored values


def _encoder_available(syntax: str) -> bool:
    if syntax == "jpeg-lossless":  # written by the test factory's own small encoder
        return True
    return get_encoder(LOSSLESS[syntax]).is_available


def _assert_phi_free(text: str, paths: list[Path]) -> None:
    assert PATIENT_NAME.split("^")[0] not in text
    assert "PAT-" not in text
    assert not re.search(r"\d+\.\d+\.\d+\.\d+\.\d+", text), text  # no UIDs
    for path in paths:
        assert str(path) not in text and str(path.parent) not in text, text
        assert path.name == "DICOMDIR" or path.name not in text, text


@pytest.mark.parametrize("syntax", sorted(NATIVE))
def test_native_syntaxes_round_trip(tmp_path: Path, syntax: str) -> None:
    path = save(mr_slice(IMAGE), tmp_path / "a.dcm", syntax)
    record = read_header(path)
    assert record.outcome == Outcome.OK, record.reason
    np.testing.assert_array_equal(decode(record)[0], IMAGE)


@pytest.mark.parametrize("syntax", sorted(LOSSLESS))
@pytest.mark.parametrize("signed", [False, True])
def test_lossless_codecs_round_trip(tmp_path: Path, syntax: str, signed: bool) -> None:
    if not _encoder_available(syntax):
        pytest.skip(f"no {syntax} encoder installed (decoding is still covered by pylibjpeg)")
    image = (IMAGE.astype(np.int16) - 2048) if signed else IMAGE
    ds = mr_slice(image, bits_stored=16 if signed else 12)
    path = save(ds, tmp_path / "a.dcm", syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == LOSSLESS[syntax]
    record = read_header(path)
    assert record.outcome == Outcome.OK, record.reason
    np.testing.assert_array_equal(decode(record)[0], image)


def test_jpeg_baseline_8bit_decodes_close(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:32, 0:40]
    image = (100 + 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.uint8)
    path = save(mr_slice(image, bits_stored=8), tmp_path / "a.dcm", "jpeg-baseline")
    record = read_header(path)
    assert record.outcome == Outcome.OK, record.reason
    assert np.abs(decode(record)[0] - image).mean() < 2.0  # lossy, but close


def test_modality_lut_is_applied(tmp_path: Path) -> None:
    path = save(mr_slice(IMAGE, slope=2, intercept=-100), tmp_path / "a.dcm")
    out = decode(read_header(path))
    assert out.dtype == np.float32 and out.shape == (1, 32, 40)
    np.testing.assert_array_equal(out[0], IMAGE.astype(np.float32) * 2 - 100)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    plain = decode(read_header(save(mr_slice(IMAGE), tmp_path / "m2.dcm")))[0]
    inverted = decode(
        read_header(save(mr_slice(IMAGE, photometric="MONOCHROME1"), tmp_path / "m1.dcm"))
    )[0]
    np.testing.assert_array_equal(inverted, 4095 - plain)  # bright still means high signal
    lut = mr_slice(IMAGE, photometric="MONOCHROME1", slope=2, intercept=-100)
    out = decode(read_header(save(lut, tmp_path / "m1lut.dcm")))[0]
    np.testing.assert_array_equal(out, 2 * (4095 - IMAGE.astype(np.float32)) - 100)


@pytest.mark.parametrize("syntax", ["explicit-le", "rle", "jpeg2000", "deflated"])
def test_enhanced_mr_per_frame_rescale_and_positions(tmp_path: Path, syntax: str) -> None:
    frames = RNG.integers(0, 4096, (4, 32, 32), dtype=np.uint16)  # JPEG 2000 needs >= 32
    positions = [(0.0, 0.0, 3.0 * k) for k in range(4)]
    slopes, intercepts = [1.0, 2.0, 0.5, 3.0], [0.0, -10.0, 5.0, 1.0]
    path = enhanced_mr(
        tmp_path / "e.dcm",
        frames,
        positions,
        temporal_ids=[1, 1, 2, 2],
        slopes=slopes,
        intercepts=intercepts,
        syntax=syntax,
    )
    record = read_header(path)
    assert record.outcome == Outcome.OK, record.reason
    assert record.frames == 4 and record.positions == positions
    assert record.temporal_ids == [1, 1, 2, 2]
    expected = frames * np.array(slopes)[:, None, None] + np.array(intercepts)[:, None, None]
    np.testing.assert_allclose(decode(record), expected.astype(np.float32))


def _bad_folder(tmp_path: Path) -> dict[str, Outcome]:
    """One file of every bad kind (plus good ones); name -> expected outcome."""
    good = save(mr_slice(IMAGE), tmp_path / "good.dcm")
    save(mr_slice(IMAGE, slope=2), tmp_path / "good_rle.dcm", "rle")
    (tmp_path / "README.txt").write_text("Exported by a PACS.\n" * 20)
    (tmp_path / "empty.dcm").write_bytes(b"")
    from PIL import Image

    Image.fromarray((IMAGE // 16).astype(np.uint8)).save(tmp_path / "photo.jpg")
    truncated_copy(good, tmp_path / "truncated.dcm", 1000)
    truncated_copy(
        save(mr_slice(IMAGE), tmp_path / "x.dcm", "rle"), tmp_path / "trunc_rle.dcm", 300
    )
    (tmp_path / "x.dcm").unlink()
    sr_document(tmp_path / "report_sr.dcm")
    dicomdir(tmp_path / "DICOMDIR")
    with_transfer_syntax(good, tmp_path / "jpegxl.dcm", "1.2.840.10008.1.2.4.110")
    with_transfer_syntax(good, tmp_path / "madeup.dcm", "1.2.826.0.1.3680043.9.99")
    no_position = mr_slice(IMAGE)
    del no_position.ImagePositionPatient
    save(no_position, tmp_path / "no_position.dcm")
    bad_orientation = mr_slice(IMAGE, orientation=(1, 0, 0, 1, 0, 0))
    save(bad_orientation, tmp_path / "bad_orientation.dcm")
    rgb = mr_slice(IMAGE)
    rgb.PhotometricInterpretation = "RGB"
    save(rgb, tmp_path / "rgb.dcm")
    return {
        "good.dcm": Outcome.OK,
        "good_rle.dcm": Outcome.OK,
        "README.txt": Outcome.NOT_DICOM,
        "empty.dcm": Outcome.NOT_DICOM,
        "photo.jpg": Outcome.NOT_DICOM,
        "truncated.dcm": Outcome.CORRUPT,
        "trunc_rle.dcm": Outcome.CORRUPT,
        "report_sr.dcm": Outcome.NOT_AN_IMAGE,
        "DICOMDIR": Outcome.NOT_AN_IMAGE,
        "jpegxl.dcm": Outcome.UNSUPPORTED_CODEC,
        "madeup.dcm": Outcome.UNSUPPORTED_CODEC,
        "no_position.dcm": Outcome.AMBIGUOUS_GEOMETRY,
        "bad_orientation.dcm": Outcome.AMBIGUOUS_GEOMETRY,
        "rgb.dcm": Outcome.NOT_AN_IMAGE,
    }


def test_every_bad_kind_gets_its_typed_outcome(tmp_path: Path) -> None:
    expected = _bad_folder(tmp_path)
    records = index_folder(tmp_path)
    assert sorted(r.path.name for r in records) == sorted(expected)
    for record in records:
        assert record.outcome == expected[record.path.name], (record.path.name, record.reason)
        assert bool(record.reason) == (record.outcome != Outcome.OK)
        _assert_phi_free(record.reason, [r.path for r in records])
    reasons = {r.path.name: r.reason for r in records}
    assert reasons["truncated.dcm"].startswith("pixel data truncated: ")
    assert "Basic Text SR" in reasons["report_sr.dcm"]
    assert "JPEG XL" in reasons["jpegxl.dcm"]
    assert "ImagePositionPatient" in reasons["no_position.dcm"]


def test_truncation_reason_counts_bytes(tmp_path: Path) -> None:
    good = save(mr_slice(IMAGE), tmp_path / "good.dcm")
    record = read_header(truncated_copy(good, tmp_path / "t.dcm", 1000))
    expected = IMAGE.nbytes
    assert record.reason == f"pixel data truncated: {expected - 1000} of {expected} bytes"


def test_decode_errors_are_typed(tmp_path: Path) -> None:
    good = save(mr_slice(IMAGE), tmp_path / "good.dcm")
    garbage = read_header(
        with_transfer_syntax(good, tmp_path / "j2k.dcm", "1.2.840.10008.1.2.4.90")
    )
    assert garbage.outcome == Outcome.OK  # the header is fine; the codestream is not
    with pytest.raises(CorruptError) as info:
        decode(garbage)
    assert info.value.outcome == Outcome.CORRUPT and info.value.reason
    unknown = read_header(good)
    unknown.transfer_syntax = "1.2.840.10008.1.2.4.110"
    with pytest.raises(CodecError) as info:
        decode(unknown)
    assert info.value.outcome == Outcome.UNSUPPORTED_CODEC


def test_index_folder_workers_and_progress(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("cad.io.index.PARALLEL_MIN_FILES", 2)
    for i in range(140):
        save(mr_slice(IMAGE[:8, :8], position=(0, 0, float(i))), tmp_path / f"s/{i:03d}.dcm")
    (tmp_path / "notes.txt").write_text("x")
    calls: list[tuple[int, int]] = []
    serial = index_folder(tmp_path, progress=lambda done, total: calls.append((done, total)))
    parallel = index_folder(tmp_path, workers=2)
    assert calls[-1] == (141, 141)
    assert [(r.path, r.outcome, r.positions) for r in serial] == [
        (r.path, r.outcome, r.positions) for r in parallel
    ]


def test_the_header_parse_keeps_every_element_the_record_needs(tmp_path: Path, monkeypatch) -> None:
    """The header parse keeps only ``HEADER_TAGS``; a parse that keeps every element must
    give the same record for every kind of file (an element read but not listed would
    silently read as missing)."""
    from dicom_factory import write_dce_study

    from cad.io import header
    from cad.io.files import walk

    _bad_folder(tmp_path / "bad")
    phases = [RNG.integers(0, 4096, (4, 16, 16), dtype=np.uint16) for _ in range(3)]
    for timing in ("temporal-id", "trigger", "acquisition"):
        write_dce_study(tmp_path / timing, phases, timing=timing)
    for syntax in ("explicit-le", "deflated", "explicit-be"):
        frames = RNG.integers(0, 4096, (2, 16, 16), dtype=np.uint16)
        enhanced_mr(
            tmp_path / f"enhanced-{syntax}.dcm",
            frames,
            [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0)],
            temporal_ids=[1, 2],
            slopes=[1.0, 2.0],
            intercepts=[0.0, -5.0],
            syntax=syntax,
        )
    save(mr_slice(IMAGE, photometric="MONOCHROME1", slope=2), tmp_path / "m1.dcm")
    nan_slope = mr_slice(IMAGE, slope=1.0)
    nan_slope["RescaleSlope"].value = "NaN"
    save(nan_slope, tmp_path / "nan_slope.dcm")
    paths = walk(tmp_path)
    kept = [header.record_bytes(read_header(p)) for p in paths]
    monkeypatch.setattr(header, "HEADER_TAGS", None)
    full = [header.record_bytes(read_header(p)) for p in paths]
    assert len(paths) > 40 and kept == full
    outcomes = {read_header(p).outcome for p in paths}
    assert {Outcome.OK, Outcome.CORRUPT, Outcome.NOT_AN_IMAGE} <= outcomes
