"""The pseudonymisation secret: created private, refused when weak or shared."""

from __future__ import annotations

import os
import stat

import pytest

from cad.phi import SECRET_ENV, SECRET_FILE, Pseudonymizer, SecretError, load_secret


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)


def test_a_new_secret_is_private_stable_and_leaves_no_temporary_file(tmp_path):
    first = load_secret(tmp_path)
    assert len(first) == 64
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert load_secret(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [SECRET_FILE]


@pytest.mark.parametrize("content", ["", "   \n", "short-secret"])
def test_an_empty_or_short_secret_file_is_refused(tmp_path, content):
    path = tmp_path / SECRET_FILE
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SecretError, match="delete it to create a new one"):
        load_secret(tmp_path)
    assert path.read_text() == content  # never overwritten: old pseudonyms may depend on it


def test_a_world_readable_secret_file_is_refused(tmp_path):
    load_secret(tmp_path)
    (tmp_path / SECRET_FILE).chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_secret(tmp_path)


@pytest.mark.parametrize("value", ["", "  ", "x" * 31])
def test_a_short_environment_secret_is_refused_without_echoing_it(monkeypatch, value):
    monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(SecretError, match=SECRET_ENV) as caught:
        load_secret()
    assert value.strip() == "" or value not in str(caught.value)


def test_a_strong_environment_secret_wins_over_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv(SECRET_ENV, "s" * 40)
    assert load_secret(tmp_path) == b"s" * 40
    assert not (tmp_path / SECRET_FILE).exists()


def test_pseudonyms_depend_on_the_secret_and_survive_non_utf8_names():
    a, b = Pseudonymizer(b"a" * 64), Pseudonymizer(b"b" * 64)
    assert a.patient("Breast_MRI_001") != b.patient("Breast_MRI_001")
    assert a.patient("Breast_MRI_001") == a.patient("Breast_MRI_001")
    name = os.fsdecode(b"study-\xff.dcm")  # surrogate-escaped, as os.listdir returns it
    assert a.file(name).startswith("file-")


def test_each_command_keeps_its_secret_beside_its_output_not_in_the_cwd(tmp_path, monkeypatch):
    """The location rule: CAD_SECRET, else .cad_secret in the folder of the command's output
    (cad run: the workdir; score/manifest: --out's folder; data check: --report's folder)."""
    from typer.testing import CliRunner

    from cad.cli import app

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runner = CliRunner()
    archive = tmp_path / "archive"
    args = ["--patients", "4", "--slices", "10", "--size", "48", "--seed", "2"]
    assert runner.invoke(app, ["data", "phantom", "--out", str(archive), *args]).exit_code == 0
    boxes, dicom = archive / "Annotation_Boxes.csv", archive / "dicom"
    manifest = tmp_path / "manifests" / "m.csv"
    manifest.parent.mkdir()
    result = runner.invoke(
        app,
        ["data", "manifest", "--dicom-root", str(dicom), "--boxes", str(boxes),
         "--out", str(manifest), "--unboxed", "negative"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (manifest.parent / SECRET_FILE).is_file()
    report = tmp_path / "reports" / "check.csv"
    result = runner.invoke(app, ["data", "check", str(dicom), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert (report.parent / SECRET_FILE).is_file()
    assert not (cwd / SECRET_FILE).exists() and not (dicom / SECRET_FILE).exists()
