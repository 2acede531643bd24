"""Exit codes every command shares: 2 for usage/config/disk errors, 3 and a PHI-free crash
report for a bug, 128+N for a signal; and every command's help lists them."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cad.io.check
from cad.cli import app
from cad.cli.crash import format_report, scrub

runner = CliRunner()
PATIENT = "Doe^Jane"
PATIENT_ID = "MRN-20240117-4711"
COMMANDS = [
    ["run"],
    ["score"],
    ["score", "merge"],
    ["data", "check"],
    ["data", "phantom"],
    ["data", "manifest"],
    ["backbones", "list"],
    ["backbones", "inspect"],
    ["pretrain"],
    ["compare"],
    ["listen"],
    ["doctor"],
]


@pytest.fixture
def crash_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "crash"


@pytest.fixture
def patient_folder(tmp_path: Path) -> Path:
    folder = tmp_path / f"{PATIENT}_{PATIENT_ID}" / "study"
    folder.mkdir(parents=True)
    (folder / "x.dcm").write_bytes(b"not dicom")
    return folder


def _bug(folder: Path) -> None:
    def check_folder(root, **kwargs):
        raise ValueError(f"unexpected value in '{root}/x.dcm' for patient {PATIENT_ID}")

    return check_folder


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_documents_every_exit_code(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "3 internal error" in text and "130/143 interrupted" in text
    assert "Exit codes" in text


def test_a_bug_exits_3_with_a_crash_report_free_of_the_patient_path(
    crash_dir, patient_folder, monkeypatch
):
    monkeypatch.setattr(cad.io.check, "check_folder", _bug(patient_folder))
    result = runner.invoke(app, ["data", "check", str(patient_folder)])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and "crash report" in result.output
    reports = list(crash_dir.iterdir())
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Traceback" in text and "ValueError" in text and "cad data check" in text
    assert "torch: 2." in text and "cad " in text
    for secret in ("Doe", "Jane", PATIENT_ID, "4711", str(patient_folder)):
        assert secret not in text, secret
        assert secret not in result.output, secret
    assert oct(reports[0].stat().st_mode & 0o777) == "0o600"


def test_debug_shows_the_traceback_and_still_exits_3(crash_dir, patient_folder, monkeypatch):
    monkeypatch.setattr(cad.io.check, "check_folder", _bug(patient_folder))
    result = runner.invoke(app, ["--debug", "data", "check", str(patient_folder)])
    assert result.exit_code == 3
    assert "Traceback" in result.output and "ValueError" in result.output


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_output_is_a_clean_error_naming_what_was_kept(
    code, tmp_path, patient_folder, monkeypatch
):
    report = tmp_path / "out" / "report.csv"

    def write_report(self, path, pseudonymizer, only_problems=False):
        raise OSError(code, __import__("os").strerror(code), str(path))

    monkeypatch.setenv("CAD_SECRET", "s" * 40)
    monkeypatch.setattr(cad.io.check.CheckResult, "write_report", write_report)
    result = runner.invoke(app, ["data", "check", str(patient_folder), "--report", str(report)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert errno.errorcode[code] in text and "Traceback" not in text
    assert "nothing else was changed" in text and str(report) in text


def test_ctrl_c_exits_130_with_what_was_kept(patient_folder, monkeypatch):
    def interrupted(root, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cad.io.check, "check_folder", interrupted)
    result = runner.invoke(app, ["data", "check", str(patient_folder)])
    assert result.exit_code == 130 and "interrupted (SIGINT)" in result.output


def test_the_report_scrubs_values_paths_and_quoted_text():
    try:
        raise KeyError(f"'{PATIENT}' not in /data/{PATIENT_ID}/a.dcm") from OSError(
            2, "No such file", f"/data/{PATIENT_ID}"
        )
    except KeyError as exc:
        text = format_report(exc, "cad run", ["run", "mine.yaml", "--set", "x=Smith"])
    assert PATIENT not in text and PATIENT_ID not in text and "Smith" not in text
    assert "mine.yaml" not in text and "which led to" in text and "--set" in text
    assert scrub("size 3 of 5", []) == "size 3 of 5"  # what is not a value stays readable


def _link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "outs" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(target)
    return link, target


@pytest.mark.parametrize("option", ["--out", "--errors", "--key-map"])
def test_score_never_writes_through_a_symlinked_output(tmp_path, option):
    from cad.errors import CadError
    from cad.scoring.api import score_folder

    (tmp_path / "dicom").mkdir()
    link, target = _link(tmp_path, "x.csv")
    outputs = {"out": tmp_path / "outs" / "p.csv", option.strip("-").replace("-", "_"): link}
    with pytest.raises(CadError, match=f"{option} is a symbolic link"):
        score_folder(tmp_path / "model", tmp_path / "dicom", workers=0, **outputs)
    assert target.read_text() == "keep me"


def test_merge_and_data_commands_never_write_through_a_symlink(tmp_path, patient_folder):
    from cad.errors import CadError
    from cad.scoring.merge import merge_shards

    link, target = _link(tmp_path, "merged.csv")
    with pytest.raises(CadError, match="--out is a symbolic link"):
        merge_shards([tmp_path / "s1.csv"], link)
    result = runner.invoke(app, ["data", "check", str(patient_folder), "--report", str(link)])
    assert result.exit_code == 2 and "symbolic link" in result.output
    result = runner.invoke(
        app, ["data", "manifest", "--dicom-root", str(patient_folder), "--out", str(link),
              "--boxes", str(tmp_path / "b.csv")],
    )  # fmt: skip
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert target.read_text() == "keep me"


def test_cad_run_says_partial_when_ingest_could_not_use_some_studies():
    from cad.cli.run import unusable_studies

    assert unusable_studies({"studies": 10, "studies_skipped": 0}) is None
    message = unusable_studies({"studies": 10, "studies_skipped": 2})
    assert message is not None and "2 of 10 studies" in message
    assert "ingest_report.csv" in message
