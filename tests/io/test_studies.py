"""Study assembly: slice order from positions, DCE phases, geometry/phase refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    AXIAL,
    enhanced_mr,
    mr_slice,
    normal,
    oblique,
    save,
    with_transfer_syntax,
    write_dce_study,
    write_series,
)
from pydicom.uid import generate_uid

from cad.io.index import index_folder
from cad.io.outcome import Outcome
from cad.io.phases import description_rank
from cad.io.study import Study, group_studies, load_study

RNG = np.random.default_rng(1)


def _volumes(n: int, slices: int = 6, size: int = 12) -> list[np.ndarray]:
    return [RNG.integers(0, 4096, (slices, size, size), dtype=np.uint16) for _ in range(n)]


def _load(root: Path, **kwargs) -> tuple[Study, list]:
    records = index_folder(root)
    groups = group_studies(records)
    assert len(groups) == 1
    return load_study(groups[0], **kwargs), records


@pytest.mark.parametrize("orientation", [AXIAL, oblique(0.4, 0.3)], ids=["axial", "oblique"])
def test_slices_sorted_by_position_not_names_or_instance_numbers(tmp_path, orientation) -> None:
    (volume,) = _volumes(1, slices=7)
    paths = write_series(tmp_path, volume, orientation=orientation, shuffle=True)
    study, _ = _load(tmp_path)
    (series,) = study.series
    np.testing.assert_array_equal(series.volume(), volume)
    assert [f.record.path for f in series.frames] == paths
    depth = [np.dot(f.position, normal(orientation)) for f in series.frames]
    assert depth == sorted(depth)
    assert [f.record.instance_number for f in series.frames] == list(range(7, 0, -1))


@pytest.mark.parametrize("timing", ["temporal-id", "trigger", "acquisition", "description"])
def test_phases_identified(tmp_path: Path, timing: str) -> None:
    phases = _volumes(4)
    folders = write_dce_study(tmp_path / "P1" / "S1", phases, timing=timing, seed=3)
    study, records = _load(tmp_path)
    assert all(r.outcome == Outcome.OK for r in records)
    assert list(study.phases) == ["pre", "post1", "post2", "post3"]
    for i, name in enumerate(study.phases):
        np.testing.assert_array_equal(study.phases[name].volume(), phases[i])
        assert study.phases[name].folder == folders[name]
    # the non-contrast T1 (same geometry) and the localizer are series, not phases
    assert {s.description for s in study.series} >= {"ax t1 non FS", "3 plane loc"}
    assert study.folder == tmp_path / "P1" / "S1"


def test_identical_timing_is_refused_as_ambiguous_phase(tmp_path: Path) -> None:
    folders = write_dce_study(tmp_path, _volumes(2), timing="same")
    study, records = _load(tmp_path)
    assert study.phases == {}
    assert "cannot be ordered" in study.phase_problem
    for record in records:
        dynamic = record.path.parent in (folders["pre"], folders["post1"])
        expected = Outcome.AMBIGUOUS_PHASE if dynamic else Outcome.OK
        assert record.outcome == expected, record.path
        if dynamic:
            assert record.reason == study.phase_problem


@pytest.mark.parametrize(
    ("descriptions", "reason"),
    [
        (["ax dyn 2nd pass", "ax dyn 1st pass", "ax dyn pre"], "contradicts the series descr"),
        (["ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass"], "no pre-contrast series"),
    ],
)
def test_timing_that_descriptions_contradict_is_refused(tmp_path, descriptions, reason) -> None:
    write_dce_study(tmp_path, _volumes(3), timing="temporal-id", descriptions=descriptions)
    study, records = _load(tmp_path)
    assert study.phases == {} and reason in study.phase_problem
    assert sum(r.outcome == Outcome.AMBIGUOUS_PHASE for r in records) == 3 * 6


def test_duplicate_positions_without_temporal_tags_are_ambiguous_geometry(tmp_path) -> None:
    (volume,) = _volumes(1, slices=4)
    uid, study_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "a", volume, series_uid=uid, study_uid=study_uid, seed=1)
    write_series(tmp_path / "b", volume[:2], series_uid=uid, study_uid=study_uid, seed=2)
    study, records = _load(tmp_path)
    assert study.series == []
    assert {r.outcome for r in records} == {Outcome.AMBIGUOUS_GEOMETRY}
    assert "no temporal tag separates them" in records[0].reason


def test_one_series_holding_every_phase_is_split_by_temporal_position(tmp_path) -> None:
    phases = _volumes(3)
    uid, study_uid = generate_uid(), generate_uid()
    for t in (2, 0, 1):  # written out of order
        write_series(
            tmp_path / f"t{t}",
            phases[t],
            series_uid=uid,
            study_uid=study_uid,
            temporal_id=t + 1,
            description="dyn mph",
            seed=t,
        )
    study, records = _load(tmp_path)
    assert all(r.outcome == Outcome.OK for r in records)
    assert list(study.phases) == ["pre", "post1", "post2"]
    for i, name in enumerate(study.phases):
        np.testing.assert_array_equal(study.phases[name].volume(), phases[i])


def test_enhanced_mr_with_every_phase_in_one_file(tmp_path: Path) -> None:
    phases = _volumes(3, slices=5)
    frames = np.concatenate(phases)
    positions = [(0.0, 0.0, 2.5 * k) for _ in range(3) for k in range(5)]
    temporal = [t + 1 for t in range(3) for _ in range(5)]
    order = RNG.permutation(len(frames))
    enhanced_mr(
        tmp_path / "mf.dcm",
        frames[order],
        [positions[i] for i in order],
        temporal_ids=[temporal[i] for i in order],
        slopes=[2.0] * 15,
        intercepts=[-5.0] * 15,
    )
    study, _ = _load(tmp_path)
    assert list(study.phases) == ["pre", "post1", "post2"]
    for i, name in enumerate(study.phases):
        np.testing.assert_array_equal(study.phases[name].volume(), phases[i] * 2.0 - 5)


def test_mixed_matrix_sizes_are_ambiguous_geometry(tmp_path: Path) -> None:
    uid, study_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "a", _volumes(1, 3, 12)[0], series_uid=uid, study_uid=study_uid)
    write_series(
        tmp_path / "b",
        _volumes(1, 3, 16)[0],
        series_uid=uid,
        study_uid=study_uid,
        origin=(0, 0, 50),
    )
    _, records = _load(tmp_path)
    assert {r.outcome for r in records} == {Outcome.AMBIGUOUS_GEOMETRY}
    assert records[0].reason == "series mixes matrix sizes"


def test_mixed_orientations_are_ambiguous_geometry_except_in_a_localizer(tmp_path) -> None:
    (volume,) = _volumes(1, slices=2)
    uid, study_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "a", volume, series_uid=uid, study_uid=study_uid)
    write_series(tmp_path / "b", volume, series_uid=uid, study_uid=study_uid, orientation=oblique())
    _, records = _load(tmp_path)
    assert {r.outcome for r in records} == {Outcome.AMBIGUOUS_GEOMETRY}
    assert records[0].reason == "series mixes slice orientations"
    # a 3-plane localizer (one series, three orientations) is fine: test_phases_identified


def test_one_corrupt_slice_never_raises_and_refuses_its_gapped_series(tmp_path) -> None:
    volume, other = _volumes(2)
    paths = write_series(tmp_path / "a", volume, study_uid="1.2.3.4")
    write_series(tmp_path / "b", other, study_uid="1.2.3.4", origin=(0, 0, 100))
    with_transfer_syntax(paths[2], paths[2], "1.2.840.10008.1.2.4.90")  # undecodable codestream
    records = index_folder(tmp_path)
    assert all(r.outcome == Outcome.OK for r in records)  # headers are all fine
    study = load_study(group_studies(records)[0])
    outcomes = {r.path: r for r in records}
    assert outcomes[paths[2]].outcome == Outcome.CORRUPT
    rest = [outcomes[p] for p in paths if p != paths[2]]
    assert {r.outcome for r in rest} == {Outcome.AMBIGUOUS_GEOMETRY}
    assert "irregular" in rest[0].reason
    (series,) = study.series  # the other series is untouched
    np.testing.assert_array_equal(series.volume(), other)


def test_a_duplicated_file_is_flagged_and_the_series_still_loads(tmp_path: Path) -> None:
    (volume,) = _volumes(1, slices=5)
    paths = write_series(tmp_path, volume)
    copy = tmp_path / "copy_of_one.dcm"
    copy.write_bytes(paths[1].read_bytes())
    study, records = _load(tmp_path)
    flagged = [r for r in records if r.outcome != Outcome.OK]
    assert len(flagged) == 1 and "duplicate" in flagged[0].reason
    np.testing.assert_array_equal(study.series[0].volume(), volume)


def test_header_only_assembly_matches(tmp_path: Path) -> None:
    write_dce_study(tmp_path, _volumes(3), timing="trigger")
    study, _ = _load(tmp_path, decode_pixels=False)
    assert list(study.phases) == ["pre", "post1", "post2"]
    assert study.phases["pre"]._pixels is None
    assert study.phases["pre"].volume().shape == (6, 12, 12)  # decodes lazily


def test_single_mr_slice_study_has_no_phases(tmp_path: Path) -> None:
    save(mr_slice(_volumes(1, 1)[0][0]), tmp_path / "one.dcm")
    study, _ = _load(tmp_path)
    assert study.phases == {} and len(study.series) == 1 and study.phase_problem == ""


@pytest.mark.parametrize(
    ("description", "rank"),
    [
        ("ax dyn pre", 0),
        ("ax dyn 1st pass", 1),
        ("ax dyn 3rd pass", 3),
        ("Ph2/ax 3d dyn MPH", 2),
        ("t1_fl3d_tra_post_2", 2),
        ("second phase", 2),
        ("ax t1 non FS", None),
        ("ax 3d dyn", None),
    ],
)
def test_description_rank(description: str, rank: int | None) -> None:
    assert description_rank(description) == rank


@pytest.mark.parametrize("timing", ["temporal-id", "description"])
def test_a_missing_middle_phase_is_refused_not_renamed(tmp_path: Path, timing: str) -> None:
    """Without the 1st pass, the 2nd pass must not silently become post1."""
    import shutil

    folders = write_dce_study(tmp_path / "P1" / "S1", _volumes(4), timing=timing, seed=5)
    shutil.rmtree(folders["post1"])
    study, records = _load(tmp_path)
    assert study.phases == {}
    dynamic = [r for r in records if r.path.parent in (folders["pre"], folders["post2"])]
    assert dynamic and all(r.outcome == Outcome.AMBIGUOUS_PHASE for r in dynamic)
    assert all("missing" in r.reason for r in dynamic)
