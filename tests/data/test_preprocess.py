"""Study -> network input: shapes, channels, normalisation, padding, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_dce_study

from cad.config import InputConfig
from cad.data.preprocess import parse_phase, series_slices, study_slices
from cad.errors import DataError
from cad.io.index import index_folder
from cad.io.study import Study, group_studies, load_study

RNG = np.random.default_rng(2)
SLICES, HEIGHT, WIDTH = 5, 16, 16


@pytest.fixture(scope="module")
def dce(tmp_path_factory) -> tuple[Study, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("dce")
    pre = RNG.integers(100, 1000, (SLICES, HEIGHT, WIDTH), dtype=np.uint16)
    phases = [pre, pre + RNG.integers(0, 800, pre.shape, dtype=np.uint16), pre + 300]
    write_dce_study(root, phases, extras=False)
    return load_study(group_studies(index_folder(root))[0]), phases


def _spec(**kwargs) -> InputConfig:
    return InputConfig(**{"size": HEIGHT, **kwargs})


def test_parse_phase() -> None:
    assert parse_phase("pre") == [("pre", 1.0)]
    assert parse_phase("post1-pre") == [("post1", 1.0), ("pre", -1.0)]


def test_dce_channels_are_normalised_with_the_pre_contrast_statistics(dce) -> None:
    study, (pre, post1, _) = dce
    out = study_slices(study, _spec())
    assert out.shape == (SLICES, 3, HEIGHT, HEIGHT) and out.dtype == np.float32
    low, high = np.percentile(pre.astype(np.float32), (1.0, 99.0))
    np.testing.assert_allclose(np.percentile(out[:, 0], (1.0, 99.0)), [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(out[:, 1], (post1 - low) / (high - low), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 2], out[:, 1] - out[:, 0], atol=1e-5)  # sub = post1 - pre
    assert out[:, 2].min() >= -1e-6  # enhancement never turns negative against pre


def test_selected_slices_equal_the_full_volume_rows(dce) -> None:
    study, _ = dce
    full = study_slices(study, _spec())
    np.testing.assert_array_equal(study_slices(study, _spec(), [3, 1]), full[[3, 1]])


def test_zscore(dce) -> None:
    study, _ = dce
    out = study_slices(study, _spec(normalization="zscore", phases=("pre",)))
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4


def test_repeat_and_single_use_the_series_own_statistics(dce) -> None:
    study, (_, _, post2) = dce
    rep = study_slices(study, _spec(channels="repeat", phases=("post2",)))
    assert rep.shape == (SLICES, 3, HEIGHT, HEIGHT)
    np.testing.assert_array_equal(rep[:, 0], rep[:, 2])
    np.testing.assert_allclose(np.percentile(rep[:, 0], (1.0, 99.0)), [0.0, 1.0], atol=1e-5)
    single = study_slices(study, _spec(channels="single", phases=("post1-pre",)))
    assert single.shape == (SLICES, 1, HEIGHT, HEIGHT)
    np.testing.assert_allclose(np.percentile(single, (1.0, 99.0)), [0.0, 1.0], atol=1e-5)
    with pytest.raises(DataError, match="constant intensity"):  # post2 - pre == 300 everywhere
        study_slices(study, _spec(channels="single", phases=("post2-pre",)))
    assert post2.dtype == np.uint16


def test_series_slices(dce) -> None:
    study, _ = dce
    out = series_slices(study.phases["pre"], _spec(channels="single"), [0])
    assert out.shape == (1, 1, HEIGHT, HEIGHT)
    with pytest.raises(DataError, match="channels 'dce' needs a DCE study"):
        series_slices(study.phases["pre"], _spec())


def test_missing_phase_names_the_phase_and_what_was_found(dce) -> None:
    study, _ = dce
    with pytest.raises(DataError, match=r"no post5 phase; phases found: pre, post1, post2"):
        study_slices(study, _spec(phases=("pre", "post5", "post5-pre")))


def test_slice_index_out_of_range(dce) -> None:
    study, _ = dce
    with pytest.raises(DataError, match="slice index 9 is outside the volume"):
        study_slices(study, _spec(), [9])


def test_pad_to_square_then_resize(tmp_path: Path) -> None:
    pre = RNG.integers(100, 1000, (3, 12, 20), dtype=np.uint16)
    write_dce_study(tmp_path, [pre, pre + 50], extras=False)
    study = load_study(group_studies(index_folder(tmp_path))[0])
    native = study_slices(study, _spec(size=20, phases=("pre", "post1-pre")))
    assert native.shape == (3, 2, 20, 20)
    low, high = np.percentile(pre.astype(np.float32), (1.0, 99.0))
    pad = (pre.min() - low) / (high - low)
    np.testing.assert_allclose(native[:, 0, :4], pad, atol=1e-6)  # 4 rows above, 4 below
    np.testing.assert_allclose(native[:, 0, 16:], pad, atol=1e-6)
    np.testing.assert_allclose(native[:, 0, 4:16], (pre - low) / (high - low), atol=1e-5)
    np.testing.assert_allclose(native[:, 1, 4:16], 50 / (high - low), atol=1e-5)
    np.testing.assert_allclose(native[:, 1, :4], 0.0, atol=1e-6)  # no enhancement in padding
    small = study_slices(study, _spec(size=16, phases=("pre", "post1-pre")))
    assert small.shape == (3, 2, 16, 16)
    np.testing.assert_allclose(small[:, 0].mean(), native[:, 0].mean(), rtol=2e-2)  # area kept
