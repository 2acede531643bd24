"""Fixtures for the PACS tests: a real Orthanc on loopback ports holding two tiny phantom
studies (one with an SR document in it), a random-weight model and the folder baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "scoring")]

from orthanc_server import Orthanc, dicom_files, orthanc_missing  # noqa: E402
from score_helpers import SECRET, make_model, package_meta  # noqa: E402

PACS_ENV = ("CAD_PACS_USER", "CAD_PACS_PASSWORD", "CAD_PACS_CREDENTIALS")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAD_SECRET", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in PACS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cad.finetune.package import save_package

    directory = tmp_path_factory.mktemp("package") / "model"
    save_package(make_model(), package_meta(0.5), directory)
    return directory


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom patients (tiny), and a Basic Text SR inside the first one's study."""
    import pydicom

    sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
    from dicom_factory import sr_document

    from cad.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("pacs-export")
    info = generate_phantom(base / "phantom", patients=2, slices=6, size=32, seed=3, workers=0)
    first = next(p for p in sorted(info.dicom_root.rglob("*.dcm")))
    ref = pydicom.dcmread(first, stop_before_pixels=True)
    sr = pydicom.dcmread(sr_document(base / "sr.dcm"))
    sr.PatientID, sr.StudyInstanceUID = ref.PatientID, ref.StudyInstanceUID
    sr.PatientName, sr.AccessionNumber, sr.StudyDate = (
        ref.PatientName,
        ref.AccessionNumber,
        ref.StudyDate,
    )
    sr.save_as(first.parent / "report_sr.dcm", enforce_file_format=True)
    (base / "sr.dcm").unlink()
    return info.dicom_root


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, export: Path):
    if reason := orthanc_missing():
        pytest.skip(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    server.upload(dicom_files(export))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def baseline(export: Path, package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The predictions of scoring the same files from a folder."""
    from cad.scoring.api import score_folder

    mp = pytest.MonkeyPatch()
    mp.setenv("CAD_SECRET", SECRET)
    out = tmp_path_factory.mktemp("folder") / "predictions.csv"
    try:
        score_folder(package, export, out, level="patient", workers=0, progress=False)
    finally:
        mp.undo()
    return out
