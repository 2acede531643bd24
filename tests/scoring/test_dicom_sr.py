"""``cad score --dicom-out``: one Comprehensive SR per scored study, in the patient's study."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from score_helpers import SECRET

from cad.errors import CadError
from cad.io.index import StudyTask
from cad.phi import Pseudonymizer
from cad.scoring.api import score_folder
from cad.scoring.dicom_sr import (
    DISCLAIMER,
    TOP_K,
    DicomResultError,
    ModelInfo,
    build_sr,
    top_slices,
)
from cad.scoring.infer import Scored
from cad.scoring.stream import StudyResult


@dataclass
class SrRun:
    out: Path
    dicom_out: Path
    threshold: float
    summary: object
    log: str


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _by_study(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    studies = defaultdict(list)
    for row in rows:
        if row["level"] == "slice":
            studies[row["study"]].append(row)
    return studies


@pytest.fixture(scope="module")
def sr_run(export, baseline, model_factory, tmp_path_factory) -> SrRun:
    """Score the export with a threshold between the studies' peaks: one study's finding
    is Abnormal, another's Normal."""
    peaks = sorted(
        max(float(r["probability"]) for r in rows)
        for rows in _by_study(_rows(baseline.out)).values()
    )
    threshold = (peaks[0] + peaks[-1]) / 2
    directory = tmp_path_factory.mktemp("dicom-sr")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("cad")
    logger.addHandler(handler)
    mp = pytest.MonkeyPatch()
    mp.setenv("CAD_SECRET", SECRET)
    try:
        summary = score_folder(
            model_factory(threshold),
            export.root,
            directory / "p.csv",
            dicom_out=directory / "results",
            batch_size=8,
            workers=0,
            progress=False,
        )
    finally:
        mp.undo()
        logger.removeHandler(handler)
    return SrRun(directory / "p.csv", directory / "results", threshold, summary, "\n".join(records))


def _source_headers(export) -> dict[str, pydicom.Dataset]:
    """Instance pseudonym -> source header, over every readable file of the export."""
    pseudo, found = Pseudonymizer(SECRET.encode()), {}
    for path in export.root.rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - the export holds bad files on purpose
            continue
        if "SOPInstanceUID" in ds:
            found[pseudo.instance(str(ds.SOPInstanceUID))] = ds
    return found


def _items(container, name) -> list:
    return [item for item in container.ContentSequence if item.name == name]


def test_an_sr_per_scored_study_and_none_for_a_failed_one(export, sr_run):
    files = sorted(sr_run.dicom_out.rglob("*"))
    srs = [p for p in files if p.is_file()]
    studies = _by_study(_rows(sr_run.out))
    assert sorted(p.parent.name for p in srs if p.name == "sr.dcm") == sorted(studies)
    assert sorted(p.name for p in srs) == sorted(["key_image.dcm", "sr.dcm"] * len(studies))
    assert len(studies) == len(export.scored_studies)
    assert sr_run.summary.dicom_results == len(studies)
    failed = pydicom.dcmread(export.missing_phase_files[0], stop_before_pixels=True)
    failed_key = Pseudonymizer(SECRET.encode()).study(str(failed.StudyInstanceUID))
    assert not (sr_run.dicom_out / failed_key).exists()
    assert not any(".tmp" in p.name for p in files)  # atomic writes leave nothing behind


def test_sr_parses_and_references_the_top_slices(export, sr_run):
    sources = _source_headers(export)
    findings = set()
    for study, rows in _by_study(_rows(sr_run.out)).items():
        path = sr_run.dicom_out / study / "sr.dcm"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == ComprehensiveSRStorage
        sr = hd.sr.srread(path)
        assert isinstance(sr, hd.sr.ComprehensiveSR)
        (root,) = sr.content
        assert root.name.value == "111017"  # CAD Processing and Findings Summary

        # the study's real identifiers, copied from its own files
        source = sources[rows[0]["instance"]]
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName

        probs = np.array([float(r["probability"]) for r in rows])
        top = sorted(range(len(rows)), key=lambda i: -probs[i])[:TOP_K]
        expected = [
            (sources[rows[i]["instance"]].SOPClassUID, sources[rows[i]["instance"]].SOPInstanceUID)
            for i in top
        ]
        (key_images,) = _items(root, codes.DCM.KeyImages)
        referenced, slice_probs = [], []
        for finding in key_images.ContentSequence:
            assert finding.name == codes.DCM.SingleImageFinding
            (image,) = _items(finding, codes.DCM.SourceImage)
            referenced.append(tuple(str(u) for u in image.value))
            (num,) = _items(finding, codes.DCM.ProbabilityOfCancer)
            slice_probs.append(float(num.value))
        assert referenced == expected  # exactly the top-k instances, most suspicious first
        assert slice_probs == pytest.approx(sorted(probs, reverse=True)[:TOP_K], abs=1e-6)
        evidence = {
            str(i.ReferencedSOPInstanceUID)
            for s in ds.CurrentRequestedProcedureEvidenceSequence
            for series in s.ReferencedSeriesSequence
            for i in series.ReferencedSOPSequence
        }
        assert evidence == {uid for _, uid in expected}

        (peak,) = _items(root, codes.DCM.ProbabilityOfCancer)
        assert float(peak.value) == pytest.approx(probs.max(), abs=1e-6)
        (threshold,) = _items(root, codes.DCM.ThresholdValue)
        assert float(threshold.value) == pytest.approx(sr_run.threshold)
        (finding,) = _items(root, codes.DCM.Finding)
        abnormal = probs.max() >= sr_run.threshold
        assert finding.value == (codes.SCT.Abnormal if abnormal else codes.SCT.Normal)
        findings.add(abnormal)
        texts = {
            name: [item.value for item in _items(root, getattr(codes.DCM, name))]
            for name in ("Comment", "AlgorithmName", "AlgorithmVersion")
        }
        assert texts["Comment"] == [DISCLAIMER]
        assert texts["AlgorithmName"] == ["cad resnet18 round 1"]
        assert texts["AlgorithmVersion"][0].startswith("cad ")
    assert findings == {True, False}  # the threshold splits the studies


def test_key_image_of_the_top_slice_with_burned_in_grad_cam(export, sr_run):
    sources = _source_headers(export)
    for study, rows in _by_study(_rows(sr_run.out)).items():
        ds = pydicom.dcmread(sr_run.dicom_out / study / "key_image.dcm")
        assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality == "OT"
        assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "RGB"
        top = max(rows, key=lambda r: float(r["probability"]))
        source = sources[top["instance"]]
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
        pixels = ds.pixel_array
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        # the heat map is in colour: many pixels are far from gray
        spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
        assert (spread > 60).mean() > 0.1


def test_csv_and_log_stay_phi_free(export, sr_run):
    errors = sr_run.out.with_name("p.errors.csv")
    assert _rows(errors)  # the export's bad files are reported
    for text in (sr_run.out.read_text(), errors.read_text(), sr_run.log):
        leaked = [value for value in export.phi if value in text]
        assert not leaked, leaked
    for path in sr_run.dicom_out.rglob("*"):  # folder and file names: pseudonyms only
        assert not [value for value in export.phi if value in path.name]


def test_top_slices_highest_first():
    assert top_slices(np.array([0.2, 0.9, 0.5, 0.9, 0.1]), 3) == [1, 3, 2]
    assert top_slices(np.array([0.4]), 3) == [0]


def test_model_version_names_the_package_and_its_mlflow_uri_only():
    local = ModelInfo.from_package("resnet50", 2, 0.4, "abc  model.safetensors\n", "/data/m")
    assert local.name == "cad resnet50 round 2" and "/data/m" not in local.version
    assert local.version.startswith("cad ") and "; package " in local.version
    mlflow = ModelInfo.from_package(
        "resnet50", 2, 0.4, "abc  model.safetensors\n", "runs:/r1/model"
    )
    assert mlflow.version == local.version + "; MLflow runs:/r1/model"


def test_unreadable_source_files_are_a_typed_error():
    result = StudyResult("p", "study-key", instances=["i1", "i2"])
    task = StudyTask("p", "study-key", ("/nonexistent/cad-test-file.dcm",), (b"",))
    model = ModelInfo("cad resnet18 round 1", "cad test", 0.5)
    with pytest.raises(DicomResultError, match="study-key.*rerun cad score"):
        build_sr(Scored(result, np.array([0.1, 0.7], np.float32)), task, model, b"s" * 32)


def test_dicom_out_inside_the_input_is_refused(export, package, tmp_path):
    with pytest.raises(CadError, match="--dicom-out points inside DICOM_DIR"):
        score_folder(package, export.root, tmp_path / "p.csv", dicom_out=export.root / "sr")


def test_cli_flag_writes_the_results(export, package, tmp_path):
    from typer.testing import CliRunner

    from cad.cli import app

    results = tmp_path / "dicom"
    args = ["score", str(export.root), "--model", str(package), "--out", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(app, [*args, "--workers", "0", "--dicom-out", str(results)])
    assert result.exit_code == 1, result.output  # the export's bad files: partly scored
    assert "DICOM SR documents" in result.output
    assert len(list(results.glob("*/sr.dcm"))) == len(export.scored_studies)
    assert not [value for value in export.phi if value in result.output]


class Interrupt(Exception):
    pass


def test_resume_writes_the_remaining_studies_results(export, package, tmp_path):
    def stop(done: int) -> None:
        if done == 1:
            raise Interrupt

    results = tmp_path / "dicom"
    options = dict(dicom_out=results, batch_size=8, workers=0, progress=False)
    with pytest.raises(Interrupt):
        score_folder(package, export.root, tmp_path / "p.csv", _on_commit=stop, **options)
    first = {p.parent.name: pydicom.dcmread(p).SOPInstanceUID for p in results.glob("*/sr.dcm")}
    assert len(first) == 1
    summary = score_folder(package, export.root, tmp_path / "p.csv", resume=True, **options)
    assert summary.resumed and summary.dicom_results == len(export.scored_studies)
    again = {p.parent.name: pydicom.dcmread(p).SOPInstanceUID for p in results.glob("*/sr.dcm")}
    assert len(again) == len(export.scored_studies)
    assert {k: again[k] for k in first} == first  # the finished study's SR is kept as it was
    with pytest.raises(CadError, match="dicom_out"):  # resuming without the flag is refused
        score_folder(package, export.root, tmp_path / "p.csv", resume=True, workers=0)


def test_a_multi_frame_source_is_referenced_by_frame(package, tmp_path):
    from dicom_factory import enhanced_mr

    rng = np.random.default_rng(0)
    slices, phases = 6, 3
    frames = rng.integers(0, 1000, (phases * slices, 32, 32)).astype(np.uint16)
    positions = [(0.0, 0.0, 3.0 * z) for _ in range(phases) for z in range(slices)]
    temporal = [t + 1 for t in range(phases) for _ in range(slices)]
    order = rng.permutation(len(frames))  # frames stored out of order
    root = tmp_path / "export"
    root.mkdir()
    source = enhanced_mr(
        root / "mf.dcm",
        frames[order],
        [positions[i] for i in order],
        temporal_ids=[temporal[i] for i in order],
    )
    out, results = tmp_path / "p.csv", tmp_path / "dicom"
    score_folder(package, root, out, dicom_out=results, workers=0, progress=False)
    rows = _rows(out)
    assert len(rows) == slices
    # slice z (pre-contrast) is the stored frame holding temporal index 1 at height z
    stored = [
        int(np.flatnonzero((order // slices == 0) & (order % slices == z))[0]) + 1
        for z in range(slices)
    ]
    top = sorted(range(slices), key=lambda i: -float(rows[i]["probability"]))[:TOP_K]
    (path,) = results.glob("*/sr.dcm")
    (root_item,) = hd.sr.srread(path).content
    (key_images,) = _items(root_item, codes.DCM.KeyImages)
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    refs = []
    for finding in key_images.ContentSequence:
        (image,) = _items(finding, codes.DCM.SourceImage)
        (ref,) = image.ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == uid
        refs.append(int(ref.ReferencedFrameNumber))
    assert refs == [stored[int(rows[i]["slice"])] for i in top]
    key = pydicom.dcmread(path.with_name("key_image.dcm"))
    assert int(key.SourceImageSequence[0].ReferencedFrameNumber) == refs[0]
