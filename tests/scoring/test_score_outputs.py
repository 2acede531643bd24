"""Aggregated levels, resume equality, Grad-CAM files, key map and training parity."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from score_helpers import SECRET, SLICES, make_model

from cad.data.ingest import ingest_folder
from cad.data.manifest import ManifestRow
from cad.device import select_runtime
from cad.errors import CadError
from cad.finetune.package import load_package
from cad.finetune.predict import predict_proba
from cad.scoring.api import score_folder
from cad.scoring.cam import grad_cam


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class Interrupt(Exception):
    pass


def _stop_after(patients: int):
    def hook(done: int) -> None:
        if done == patients:
            raise Interrupt

    return hook


def check_aggregates(rows: list[dict[str, str]], level: str) -> None:
    slices = [r for r in rows if r["level"] == "slice"]
    groups = defaultdict(list)
    for r in slices:
        groups[r["series"] if level == "series" else r["patient"]].append(r)
    aggregated = [r for r in rows if r["level"] == level]
    assert {r["level"] for r in rows} == {"slice", level}
    assert len(aggregated) == len(groups) == 3
    for agg in aggregated:
        members = groups[agg["series"] if level == "series" else agg["patient"]]
        probs = np.array([float(r["probability"]) for r in members])
        assert int(agg["slices"]) == len(members) == SLICES
        assert int(agg["positive_slices"]) == sum(r["label"] == "1" for r in members)
        assert float(agg["max_probability"]) == pytest.approx(probs.max(), abs=1e-6)
        assert float(agg["mean_probability"]) == pytest.approx(probs.mean(), abs=1e-6)
        assert agg["label"] == str(int(agg["positive_slices"] != "0"))
        assert agg["sample"] == agg["probability"] == ""
        # the aggregated row directly follows the slices it summarises
        index = rows.index(agg)
        assert rows[index - 1] is members[-1]


def test_patient_level_rows(baseline):
    check_aggregates(read_rows(baseline.out), "patient")


def test_series_level_rows(export, package, tmp_path):
    out = tmp_path / "p.csv"
    score_folder(package, export.root, out, level="series", batch_size=7, workers=0, progress=False)
    check_aggregates(read_rows(out), "series")


def test_resume_after_interruption_equals_uninterrupted_run(export, package, baseline, tmp_path):
    options, out, keys = baseline.options, tmp_path / "p.csv", tmp_path / "keys.csv"
    with pytest.raises(Interrupt):
        score_folder(package, export.root, out, key_map=keys, _on_commit=_stop_after(1), **options)
    assert 0 < len(read_rows(out)) < len(read_rows(baseline.out))
    # a half-written next patient, as a kill during writing leaves it
    with open(out, "a") as handle:
        handle.write("slice,pat-half,stu-half,ser-half,ins-half,0,slc-half,0.5")
    with open(tmp_path / "p.errors.csv", "a") as handle:
        handle.write("file-half,corr")
    with pytest.raises(CadError, match="level"):  # resuming with other options is refused
        score_folder(
            package, export.root, out, key_map=keys, resume=True, **{**options, "level": "series"}
        )

    resumed = score_folder(package, export.root, out, key_map=keys, resume=True, **options)
    pairs = [
        (out, baseline.out),
        (keys, baseline.key_map),
        (tmp_path / "p.errors.csv", baseline.out.with_name("p.errors.csv")),
    ]
    for mine, reference in pairs:
        assert mine.read_bytes() == reference.read_bytes(), mine.name
    assert resumed.resumed
    for field in (
        "files",
        "studies",
        "studies_scored",
        "slices",
        "scored_files",
        "skipped",
        "errors",
        "exit_code",
    ):
        assert getattr(resumed, field) == getattr(baseline.summary, field), field

    again = score_folder(package, export.root, out, key_map=keys, resume=True, **options)
    assert again.slices == baseline.summary.slices  # finished: nothing left to do
    assert out.read_bytes() == baseline.out.read_bytes()


def test_cam_only_for_slices_at_or_above_threshold(export, model_factory, baseline, tmp_path):
    probs = sorted(
        float(r["probability"]) for r in read_rows(baseline.out) if r["level"] == "slice"
    )
    threshold = float(np.median(probs)) + 1e-7  # about half of the slices are above it
    cams = tmp_path / "cam"
    summary = score_folder(
        model_factory(threshold),
        export.root,
        tmp_path / "p.csv",
        cam_dir=cams,
        workers=0,
        progress=False,
    )
    rows = read_rows(tmp_path / "p.csv")
    positive = {r["sample"] for r in rows if r["label"] == "1"}
    assert 0 < len(positive) < len(rows)
    assert {p.stem for p in cams.glob("*.png")} == positive
    assert summary.cams == len(positive)
    png = next(cams.glob("*.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_grad_cam_is_taken_at_the_connection_node():
    model = make_model()
    images = torch.rand(3, 3, 48, 48)
    cams = grad_cam(model, images)
    assert cams.shape == (3, 48, 48) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # by hand, through the full graph: d(positive logit)/d(connection-node tensor)
    features = model.features(images)
    features.retain_grad()
    model.head(features)[:, 1].sum().backward()
    weights = features.grad.mean((2, 3), keepdim=True)
    by_hand = torch.relu((weights * features).sum(1, keepdim=True)).detach()
    assert by_hand.shape[-1] < 48  # a coarse spatial map, upsampled to the input
    by_hand = F.interpolate(by_hand, size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    by_hand = by_hand / by_hand.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    np.testing.assert_allclose(cams, by_hand.numpy(), atol=1e-5)


def test_key_map_maps_pseudonyms_back(export, baseline):
    assert baseline.key_map.stat().st_mode & 0o077 == 0  # owner-only: it holds PHI
    mapping = defaultdict(dict)
    for r in read_rows(baseline.key_map):
        mapping[r["identifier_kind"]][r["pseudonym"]] = r["identifier"]
    rows = [r for r in read_rows(baseline.out) if r["level"] == "slice"]
    patient_dirs = {p.name for p in export.root.iterdir()}
    assert {mapping["PatientID"][r["patient"]] for r in rows} <= patient_dirs
    assert {mapping["StudyInstanceUID"][r["study"]] for r in rows} == set(export.scored_studies)
    assert all(Path(mapping["path"][r["instance"]]).is_file() for r in rows)
    errors = read_rows(baseline.out.with_name("p.errors.csv"))
    assert {Path(mapping["path"][r["file"]]) for r in errors} >= set(export.bad)
    assert str(export.root) not in baseline.out.read_text()


@pytest.mark.parametrize("denoiser", [False, True])
def test_probabilities_match_training_ingest_and_evaluate(
    export, model_factory, baseline, tmp_path, denoiser
):
    """Same preprocessing and inference as ingest + evaluate (``prepare_images``, then
    ``predict_proba``), with and without a packaged DnCNN denoiser. The lead's
    pipeline-level test compares against a finished run; this checks each study directly."""
    package, out = model_factory(0.5, denoiser), baseline.out
    if denoiser:
        out = tmp_path / "p.csv"
        score_folder(package, export.root, out, batch_size=16, workers=0, progress=False)
    scored = {r["sample"]: float(r["probability"]) for r in read_rows(out) if r["level"] == "slice"}
    loaded = load_package(package)
    assert (loaded.denoiser is not None) == denoiser
    runtime = select_runtime("auto")
    model = runtime.prepare(loaded.model)
    compared = 0
    for study in sorted(p for p in export.root.glob("Breast_*/*") if p.is_dir())[:-1]:
        rows = [ManifestRow(study.parent.name, study.name, "dce", None, 0)]
        result = ingest_folder(study, rows, loaded.input_spec, SECRET.encode())
        assert not result.error
        probs = predict_proba(model, loaded.prepare_images(result.images), runtime)
        for sample, p in zip(result.samples, probs, strict=True):
            assert scored[sample.sample] == pytest.approx(float(p), abs=1.5e-6)
            compared += 1
        if denoiser:  # the denoiser does change the network's input
            change = np.abs(loaded.prepare_images(result.images) - result.images).mean()
            assert change > 1e-3
    assert compared == len(scored)


def test_resume_notices_an_input_file_changed_since(export, package, baseline, tmp_path):
    options, out = baseline.options, tmp_path / "p.csv"
    with pytest.raises(Interrupt):
        score_folder(package, export.root, out, _on_commit=_stop_after(1), **options)
    victim = next(export.root.rglob("*.dcm"))
    stat = victim.stat()
    try:
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten later
        with pytest.raises(CadError, match="folder"):
            score_folder(package, export.root, out, resume=True, **options)
    finally:
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
