"""Storing result objects back into Orthanc, and the credential and URL rules."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from orthanc_server import CAD_AET, PASSWORD, USER
from typer.testing import CliRunner

from cad.cli import app


def _result_objects(folder: Path) -> list[Path]:
    """Two new DICOM objects (an SR, an MR copy with new UIDs) and a non-DICOM file."""
    from dicom_factory import sr_document

    folder.mkdir()
    sr = sr_document(folder / "result_sr.dcm")
    (folder / "notes.txt").write_text("not DICOM\n")
    return [sr, folder / "notes.txt"]


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_send_stores_files_that_read_back(kind, orthanc, monkeypatch, tmp_path):
    if kind == "dicomweb" and not orthanc.dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    monkeypatch.setenv("CAD_PACS_USER", USER)
    monkeypatch.setenv("CAD_PACS_PASSWORD", PASSWORD)
    sr, text = _result_objects(tmp_path / "results")
    uid = str(pydicom.dcmread(sr).SOPInstanceUID)
    url = orthanc.dicomweb_url if kind == "dicomweb" else orthanc.dimse_url
    args = ["pacs", "send", "--pacs", url, str(tmp_path / "results")]
    args += ["--calling-aet", CAD_AET] if kind == "dimse" else []
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the text file is refused, the SR stored
    assert "stored 1 of 2 files" in result.output and "not a readable DICOM" in result.output
    assert PASSWORD not in result.output and str(tmp_path) not in result.output
    import io

    import requests

    hits = requests.post(
        orthanc.http + "/tools/lookup", data=uid, auth=(USER, PASSWORD), timeout=30
    ).json()
    assert [h["Type"] for h in hits] == ["Instance"]
    stored = orthanc.get(f"/instances/{hits[0]['ID']}/file").content
    assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == uid


def test_send_function_takes_a_folder(orthanc, monkeypatch, tmp_path):
    from cad.pacs.send import send_results

    monkeypatch.setenv("CAD_PACS_USER", USER)
    monkeypatch.setenv("CAD_PACS_PASSWORD", PASSWORD)
    sr, text = _result_objects(tmp_path / "results")
    url = orthanc.dicomweb_url if orthanc.dicomweb else orthanc.dimse_url
    report = send_results(url, tmp_path / "results", calling_aet=CAD_AET)
    assert report.stored == [sr] and list(report.failed) == [text] and report.exit_code == 1


def test_credentials_file_must_be_private(monkeypatch, tmp_path):
    from cad.pacs.credentials import load_credentials
    from cad.pacs.errors import CredentialsError

    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"user": "u", "password": "s3cret-value"}))
    path.chmod(0o644)
    monkeypatch.setenv("CAD_PACS_CREDENTIALS", str(path))
    with pytest.raises(CredentialsError, match="chmod 600") as caught:
        load_credentials()
    assert "s3cret-value" not in str(caught.value)
    path.chmod(0o600)
    creds = load_credentials()
    assert (creds.user, creds.password) == ("u", "s3cret-value")
    assert "s3cret-value" not in repr(creds)
    path.write_text("u:s3cret-value")
    with pytest.raises(CredentialsError, match="JSON") as caught:
        load_credentials()
    assert "s3cret-value" not in str(caught.value)


def test_credentials_in_the_url_are_refused_without_echo():
    from cad.pacs.errors import PacsUrlError
    from cad.pacs.target import parse_target

    with pytest.raises(PacsUrlError, match="CAD_PACS_USER") as caught:
        parse_target("http://alice:hunter2-pw@pacs:8042/dicom-web")
    assert "hunter2-pw" not in str(caught.value)
    target = parse_target("dicom://ORTHANC@pacs.local:4242", "CADAE")
    assert (target.kind, target.called_aet, target.port, target.calling_aet) == (
        "dimse", "ORTHANC", 4242, "CADAE"
    )  # fmt: skip
    with pytest.raises(PacsUrlError, match="neither DICOMweb nor DIMSE"):
        parse_target("ftp://pacs")


def test_query_files(tmp_path):
    from cad.pacs.errors import PacsQueryError
    from cad.pacs.query import accessions, build_query, date_range, patients

    assert date_range("20250101-20250131")[0].as_dict() == {"StudyDate": "20250101-20250131"}
    with pytest.raises(PacsQueryError, match="ends before"):
        date_range("20250131-20250101")
    with pytest.raises(PacsQueryError, match="exactly one"):
        build_query(None, None, None)
    acc = tmp_path / "acc.txt"
    acc.write_text("AccessionNumber\nA1  # first\n\nA2\nA1\n")
    assert [f.as_dict() for f in accessions(acc)] == [
        {"AccessionNumber": "A1"}, {"AccessionNumber": "A2"}
    ]  # fmt: skip
    assert all("A1" not in f.label and "A2" not in f.label for f in accessions(acc))
    keymap = tmp_path / "keys.csv"
    keymap.write_text(
        "pseudonym,identifier_kind,identifier\npat-1,PatientID,P001\nstu-1,StudyInstanceUID,1.2\n"
    )
    assert [(f.as_dict(), f.label) for f in patients(keymap)] == [
        ({"PatientID": "P001"}, "patient pat-1")
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("id\nP1\n")
    with pytest.raises(PacsQueryError, match="pseudonym,patient_id"):
        patients(bad)
