"""``cad score --pacs`` against a real Orthanc: same predictions as the folder, typed errors,
no credentials anywhere, complete-or-absent staging, resume after a broken transfer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from orthanc_server import CAD_AET, PASSWORD, USER, free_port
from typer.testing import CliRunner

from cad.cli import app


def run(orthanc_url: str, out: Path, *extra: str, package: Path):
    args = ["score", "--model", str(package), "--pacs", orthanc_url, "--out", str(out)]
    args += ["--level", "patient", "--workers", "0", *extra]
    return CliRunner().invoke(app, args)


def transfers(out: Path) -> list[dict[str, str]]:
    with open(out.with_name(f"{out.stem}.transfers.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def errors(out: Path) -> list[dict[str, str]]:
    with open(out.with_name(f"{out.stem}.errors.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAD_PACS_USER", USER)
    monkeypatch.setenv("CAD_PACS_PASSWORD", PASSWORD)


def _no_secrets(result, out: Path) -> None:
    texts = [result.output] + [p.read_text() for p in out.parent.glob(f"{out.stem}*.csv")]
    for text in texts:
        assert PASSWORD not in text


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_pacs_scores_like_the_folder(kind, orthanc, baseline, package, login, tmp_path):
    if kind == "dicomweb" and not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    url = orthanc.dicomweb_url if kind == "dicomweb" else orthanc.dimse_url
    out = tmp_path / "out" / "predictions.csv"
    extra = ["--calling-aet", CAD_AET] if kind == "dimse" else []
    result = run(url, out, "--study-date", "19000101-20991231", *extra, package=package)
    assert result.exit_code == 1, result.output  # the SR is not an image: partial
    assert out.read_bytes() == baseline.read_bytes()
    assert [t["outcome"] for t in transfers(out)] == ["retrieved", "retrieved"]
    assert [e["outcome"] for e in errors(out)] == ["not-an-image"]
    assert not (tmp_path / "out" / "predictions.staged").exists()  # deleted after success
    _no_secrets(result, out)
    assert USER not in result.output


def test_wrong_password_is_a_typed_error_exit_2(orthanc, package, monkeypatch, tmp_path):
    if not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    monkeypatch.setenv("CAD_PACS_USER", USER)
    monkeypatch.setenv("CAD_PACS_PASSWORD", "not-the-password-123")
    out = tmp_path / "predictions.csv"
    result = run(orthanc.dicomweb_url, out, "--study-date", "19000101-20991231", package=package)
    assert result.exit_code == 2, result.output
    assert "HTTP 401" in result.output and "CAD_PACS_PASSWORD" in result.output
    assert "not-the-password-123" not in result.output and not out.exists()


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_unreachable_pacs_is_a_typed_error(kind, package, login, tmp_path):
    from cad.pacs.errors import PacsUnreachable
    from cad.pacs.score import score_pacs

    port = free_port()  # nobody listens there
    url = (
        f"http://127.0.0.1:{port}/dicom-web"
        if kind == "dicomweb"
        else f"dicom://X@127.0.0.1:{port}"
    )
    with pytest.raises(PacsUnreachable, match="cannot be reached") as caught:
        score_pacs(package, url, tmp_path / "p.csv", study_date="20250101", timeout=5, workers=0)
    assert url in str(caught.value) and PASSWORD not in str(caught.value)
    result = run(url, tmp_path / "p.csv", "--study-date", "20250101", package=package)
    assert result.exit_code == 2 and "cannot be reached" in result.output


def test_unknown_calling_aet_is_refused(orthanc, package, tmp_path):
    result = run(orthanc.dimse_url, tmp_path / "p.csv", "--study-date", "19000101-20991231",
                 "--calling-aet", "STRANGER", package=package)  # fmt: skip
    assert result.exit_code == 2 and "STRANGER" in result.output, result.output


def test_broken_transfer_stages_nothing_and_a_rerun_completes(
    orthanc, baseline, package, login, tmp_path, monkeypatch
):
    """The connection breaks after a few instances of the second study: that study is not
    staged, the first is scored; the rerun fetches only the second and matches the folder."""
    if not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    import requests

    from cad.pacs.dicomweb import DicomWebClient
    from cad.pacs.score import score_pacs

    real = DicomWebClient.retrieve
    calls = []

    def flaky(self, study, folder, name, on_file):
        calls.append(study.study_uid)
        if len(calls) == 2:

            def break_off():
                if len(list(folder.iterdir())) == 5:
                    raise requests.exceptions.ChunkedEncodingError("connection reset")

            try:
                return real(self, study, folder, name, break_off)
            finally:
                assert len(list(folder.iterdir())) == 5  # half a study was received
        return real(self, study, folder, name, on_file)

    monkeypatch.setattr(DicomWebClient, "retrieve", flaky)
    out = tmp_path / "predictions.csv"
    options = dict(study_date="19000101-20991231", level="patient", workers=0, progress=False)
    first = score_pacs(package, orthanc.dicomweb_url, out, **options)
    assert [t.outcome for t in first.transfers] == ["retrieved", "transfer-failed"]
    assert first.exit_code == 1 and first.staging_kept and first.studies_scored == 1
    staging = Path(first.staging)
    assert sorted(p.name for p in (staging / "studies").iterdir()) == [first.transfers[0].study]
    assert not list((staging / "incoming").iterdir())
    assert oct(staging.stat().st_mode & 0o777) == "0o700"

    calls.clear()
    second = score_pacs(package, orthanc.dicomweb_url, out, **options)
    assert [t.outcome for t in second.transfers] == ["already-staged", "retrieved"]
    assert len(calls) == 1  # the staged study was not fetched again
    assert out.read_bytes() == baseline.read_bytes()
    assert not staging.exists()
