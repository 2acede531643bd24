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


def _phi(export: Path) -> set[str]:
    import pydicom

    found = set()
    for path in export.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID"):
            found.add(str(ds.get(keyword) or ""))
    return {value for value in found if len(value) >= 6}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_accession_and_patient_queries_keep_phi_out(
    kind, orthanc, export, package, login, tmp_path
):
    """Query files carry PHI; the console, logs and outputs must not."""
    import pydicom

    if kind == "dicomweb" and not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    url = orthanc.dicomweb_url if kind == "dicomweb" else orthanc.dimse_url
    first = pydicom.dcmread(next(iter(sorted(export.rglob("*.dcm")))), stop_before_pixels=True)
    (tmp_path / "acc.txt").write_text(f"{first.AccessionNumber}\n")
    (tmp_path / "map.csv").write_text(f"pseudonym,patient_id\npat-x,{first.PatientID}\n")
    for option, name in (("--accessions", "acc.txt"), ("--patients", "map.csv")):
        out = tmp_path / name.replace(".", "_") / "p.csv"
        result = run(url, out, option, str(tmp_path / name), "--calling-aet", CAD_AET,
                     "--keep-staged", package=package)  # fmt: skip
        assert result.exit_code == 1, result.output  # the one study, with its SR
        assert [t["outcome"] for t in transfers(out)] == ["retrieved"]
        staged = out.with_name("p.staged") / "studies"
        assert len(list(staged.iterdir())) == 1 and "patient data" in result.output
        texts = [result.output] + [p.read_text() for p in out.parent.glob("*.csv")]
        texts += [" ".join(str(p) for p in staged.rglob("*"))]  # staged names are keys
        leaked = [v for v in _phi(export) for text in texts if v in text]
        assert not leaked, leaked


def test_pacs_killed_during_c_get_then_rerun(export, baseline, package, tmp_path):
    """A real interruption: Orthanc dies in the middle of a study's C-GET. Nothing of that
    study is staged; after a restart the rerun fetches the rest and matches the folder."""
    from orthanc_server import Orthanc, dicom_files

    from cad.pacs.errors import PacsUnreachable
    from cad.pacs.score import score_pacs

    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(dicom_files(export))
        received = [0]

        def on_file() -> None:
            received[0] += 1
            if received[0] == 45:  # within the second study (35-36 instances each)
                server.kill()

        out = tmp_path / "predictions.csv"
        options = dict(study_date="19000101-20991231", level="patient", workers=0)
        options |= dict(progress=False, calling_aet=CAD_AET, timeout=10)
        first = score_pacs(package, server.dimse_url, out, _on_file=on_file, **options)
        assert [t.outcome for t in first.transfers] == ["retrieved", "transfer-failed"]
        assert first.exit_code == 1 and first.studies_scored == 1
        staging = Path(first.staging)
        assert len(list((staging / "studies").iterdir())) == 1
        assert not list((staging / "incoming").iterdir())
        with pytest.raises(PacsUnreachable):  # the PACS is down: a typed error, exit 2
            score_pacs(package, server.dimse_url, out, **options)
        assert len(list((staging / "studies").iterdir())) == 1  # nothing staged was lost
        server.start()
        second = score_pacs(package, server.dimse_url, out, **options)
        assert [t.outcome for t in second.transfers] == ["already-staged", "retrieved"]
        assert out.read_bytes() == baseline.read_bytes() and not staging.exists()
    finally:
        server.stop()


def test_send_results_stores_each_studys_sr_into_its_own_study(orthanc, package, login, tmp_path):
    """--pacs + --dicom-out + --send-results: the SR of every scored study goes back into
    that study in the PACS (and is removed again, the Orthanc fixture is shared)."""
    import pydicom

    if not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    out, results = tmp_path / "out" / "predictions.csv", tmp_path / "results"
    result = run(
        orthanc.dicomweb_url,
        out,
        "--study-date",
        "19000101-20991231",
        "--dicom-out",
        str(results),
        "--send-results",
        package=package,
    )
    assert result.exit_code == 1, result.output  # the study's own SR is not an image
    written = sorted(results.rglob("sr.dcm"))
    assert written and "results stored into the PACS" in result.output
    try:
        for path in written:
            sr = pydicom.dcmread(path)
            hits = orthanc.lookup(str(sr.SOPInstanceUID))
            assert [h["Type"] for h in hits] == ["Instance"]
            study = orthanc.get(f"/instances/{hits[0]['ID']}/study").json()
            assert study["MainDicomTags"]["StudyInstanceUID"] == sr.StudyInstanceUID
    finally:  # the Orthanc fixture is shared: leave only the export in it
        orthanc.remove(results.rglob("*.dcm"))
    assert PASSWORD not in result.output


def test_send_results_needs_a_pacs_and_a_dicom_out(package, tmp_path):
    result = CliRunner().invoke(
        app,
        ["score", str(tmp_path), "--model", str(package), "--out", str(tmp_path / "p.csv")]
        + ["--send-results"],
    )
    assert result.exit_code == 2 and "--send-results" in result.output
