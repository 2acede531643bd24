"""The model card in the package, and ``cad score --report-dir`` (HTML, PHI flag, PDF)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from score_helpers import SECRET, make_model, package_meta

from cad.artifacts.evaluation import ChanceLevels, EvaluationMetrics, Interval, LevelResult
from cad.artifacts.model_card import CARD, render_card
from cad.artifacts.model_package import read_card, read_sums
from cad.artifacts.splits import SplitAssignment, SplitSize
from cad.errors import CadError, ModelPackageError
from cad.evaluate.metrics import METRICS
from cad.finetune.package import load_package, publish_package, save_package
from cad.scoring.api import score_folder

PATIENT_KEYS = ["p-train-secretkey1", "p-val-secretkey2", "p-test-secretkey3"]


def _level(auc: float) -> LevelResult:
    metrics = {name: Interval(value=0.8, low=0.6, high=0.9) for name in METRICS}
    metrics["roc_auc"] = Interval(value=auc, low=auc - 0.1, high=min(auc + 0.05, 1.0))
    return LevelResult(
        samples=40,
        positives=10,
        chance=ChanceLevels(prevalence=0.25, f1_all_positive=0.4, f1_prevalence=0.25),
        metrics=metrics,
        operating={"ece": 0.0421, "brier": 0.1234},
    )


def _assignment() -> SplitAssignment:
    sizes = {
        "train": SplitSize(patients=6, samples=60, positives=15),
        "val": SplitSize(patients=2, samples=20, positives=5),
        "test": SplitSize(patients=2, samples=40, positives=10),
    }
    return SplitAssignment(
        train=PATIENT_KEYS[:1], val=PATIENT_KEYS[1:2], test=PATIENT_KEYS[2:], folds={}, sizes=sizes
    )


def _published(tmp: Path) -> Path:
    """A finetune-like package (card without test metrics) and its evaluated copy."""
    meta = package_meta(0.5)
    assignment = _assignment()
    trained = save_package(
        make_model(), meta, tmp / "trained", card=render_card(meta, assignment.sizes)
    )
    test = EvaluationMetrics(
        threshold=0.5, slice=_level(0.8771), patient=_level(0.7652), calibration="temperature"
    )
    return publish_package(trained, tmp / "published", render_card(meta, assignment.sizes, test))


@pytest.fixture(scope="module")
def carded(tmp_path_factory) -> Path:
    return _published(tmp_path_factory.mktemp("carded"))


def test_card_is_in_the_package_checksummed_with_test_metrics_and_no_patient_keys(carded):
    trained = carded.parent / "trained"
    assert CARD in read_sums(trained) and CARD in read_sums(carded)
    assert "Not yet evaluated" in read_card(trained)
    card = read_card(carded)
    assert "0.877" in card and "0.765" in card  # slice and patient test ROC AUC
    assert "0.042" in card and "0.123" in card  # ECE, Brier
    assert "| train | 6 | 60 | 15 | 0.250 |" in card
    assert "Weights source: random" in card and "temperature" in card
    assert "not a medical device" in card.lower()
    assert not any(key in card for key in PATIENT_KEYS)
    assert str(carded.parent) not in card
    load_package(carded)  # verifies every listed file, the card included
    (carded.parent / "tampered").mkdir()
    tampered = carded.parent / "tampered" / "model"
    shutil.copytree(carded, tampered)
    (tampered / CARD).write_text(read_card(carded).replace("0.877", "0.999"))
    with pytest.raises(ModelPackageError, match=CARD):
        load_package(tampered)
    assert (carded / "model.safetensors").stat().st_ino == (
        trained / "model.safetensors"
    ).stat().st_ino or (carded / "model.safetensors").read_bytes() == (
        trained / "model.safetensors"
    ).read_bytes()


@dataclass
class ReportRun:
    directory: Path
    summary: object
    studies: list[str]


def _studies(out: Path) -> list[str]:
    with open(out, newline="") as handle:
        return sorted({row["study"] for row in csv.DictReader(handle) if row["study"]})


def _report_run(export, carded, directory: Path, **options) -> ReportRun:
    mp = pytest.MonkeyPatch()
    mp.setenv("CAD_SECRET", SECRET)
    try:
        summary = score_folder(
            carded,
            export.root,
            directory / "p.csv",
            report_dir=directory / "reports",
            batch_size=8,
            workers=0,
            progress=False,
            **options,
        )
    finally:
        mp.undo()
    return ReportRun(directory / "reports", summary, _studies(directory / "p.csv"))


@pytest.fixture(scope="module")
def plain(export, carded, tmp_path_factory) -> ReportRun:
    return _report_run(export, carded, tmp_path_factory.mktemp("report-plain"))


def _identities(export) -> set[str]:
    """PatientName and PatientID of the scored studies, read from their files."""
    found = set()
    for path in export.root.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - the export holds bad files on purpose
            continue
        if str(ds.get("StudyInstanceUID", "")) in export.scored_studies:
            found |= {str(ds.PatientName), str(ds.PatientID)}
    return {text for text in found if text}


def test_report_per_study_with_finding_three_key_images_and_card_without_phi(export, plain):
    assert plain.summary.reports == len(plain.studies) == len(export.scored_studies)
    identities = _identities(export)
    assert identities
    for study in plain.studies:
        page = (plain.directory / study / "report.html").read_text()
        assert "Probability of cancer" in page and "Decision at threshold 0.500" in page
        assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) == 3
        assert "Model card: cad resnet18 round 1" in page and "0.877" in page
        assert "None stated for a single study" in page
        assert not any(text in page for text in identities | export.phi)
        assert "http" not in page  # self-contained: nothing fetched
    assert not list(plain.directory.rglob("report.pdf"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian package chromium)")
    return found


def test_report_renders_in_headless_chromium(plain, tmp_path):
    chromium = _chromium()
    page = plain.directory / plain.studies[0] / "report.html"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    dom = subprocess.run(
        [*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=300
    ).stdout
    assert 'id="finding"' in dom and "Decision at threshold" in dom
    assert dom.count('class="key-slice"') == 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=300,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_phi_and_pdf(export, carded, tmp_path):
    _chromium()
    run = _report_run(export, carded, tmp_path, report_phi=True, report_pdf=True)
    identities = _identities(export)
    pages = [(run.directory / s / "report.html").read_text() for s in run.studies]
    assert all("Patient ID" in page for page in pages)
    assert identities <= {text for text in identities if any(text in p for p in pages)}
    for study in run.studies:
        assert (run.directory / study / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert identities.isdisjoint(Path(tmp_path / "p.csv").read_text().split(","))


def test_report_options_need_report_dir_and_a_local_executor(export, carded, tmp_path):
    with pytest.raises(CadError, match="--report-dir"):
        score_folder(carded, export.root, tmp_path / "p.csv", report_phi=True, progress=False)
    with pytest.raises(CadError, match="--report-dir is not available with --executor ray"):
        score_folder(
            carded,
            export.root,
            tmp_path / "p.csv",
            report_dir=tmp_path / "r",
            executor="ray",
            progress=False,
        )


def test_pdf_without_chromium_is_a_typed_error_naming_the_fix(monkeypatch):
    from cad.scoring import report

    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    with pytest.raises(report.ReportError, match="apt-get install chromium"):
        report.find_chromium()


def test_cli_report_dir_for_a_package_without_card_and_refused_inside_the_input(
    export, package, tmp_path
):
    from typer.testing import CliRunner

    from cad.cli import app

    patient = next(p for p in sorted(export.root.iterdir()) if p.name.startswith("Breast"))
    shutil.copytree(patient, tmp_path / "copy" / patient.name)
    base = ["score", str(tmp_path / "copy"), "--model", str(package), "--workers", "0"]
    base += ["--out", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(app, [*base, "--report-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert "reports: 1" in result.output
    (page,) = (tmp_path / "reports").glob("*/report.html")
    assert "has no model card" in page.read_text()  # a package written before cards
    inside = [*base, "--report-dir", str(tmp_path / "copy" / "reports")]
    result = CliRunner().invoke(app, inside)
    assert result.exit_code == 2 and "--report-dir points inside DICOM_DIR" in result.output


def test_publishing_a_package_with_a_denoiser_keeps_it_verified(model_factory, tmp_path):
    source = model_factory(0.5, denoiser=True)
    published = publish_package(source, tmp_path / "model", "# card\n")
    assert set(read_sums(published)) == {
        "model.safetensors",
        "model.json",
        "denoiser.safetensors",
        CARD,
    }
    assert load_package(published).denoiser is not None
    assert read_card(published) == "# card\n"
