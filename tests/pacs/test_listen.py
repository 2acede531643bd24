"""``cad listen`` as a real process on a loopback port, fed by pynetdicom's C-STORE SCU:
the rows of `cad score` on the same files, typed outcomes for non-images, rejected callers,
and a SIGTERM that keeps a received study for the next start (which scores it once)."""

from __future__ import annotations

import csv
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from orthanc_server import dicom_files
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from score_helpers import SECRET

ROOT = Path(__file__).resolve().parents[2]
SENDER = "MODALITY1"


@dataclass
class Listening:
    proc: subprocess.Popen
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait()


def start(package: Path, out: Path, *extra: str) -> Listening:
    """``cad listen`` on a free loopback port; returns once it listens (its log says so)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"listen-{len(list(out.parent.glob('listen-*.log')))}.log"
    command = [sys.executable, "-m", "cad", "listen", "--model", str(package), "--out", str(out),
               "--port", "0", "--workers", "0", "--batch-size", "8", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with open(log, "w") as handle:
        # SIGINT as a terminal gives it: a test runner started in the background (bash
        # without job control) passes SIGINT ignored, and the listener would keep it so
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    while proc.poll() is None:
        if found := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()):
            return Listening(proc, int(found.group(1)), log)
        time.sleep(0.1)
    pytest.fail(f"cad listen ended with {proc.returncode} before listening:\n{log.read_text()}")


def send(port: int, files: list[Path], calling: str = SENDER) -> list[int]:
    """C-STORE every file in one association; the status of each."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for sop_class, syntax in sorted(
        {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    ):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="CAD")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def received(out: Path) -> list[dict[str, str]]:
    with open(out.with_name(f"{out.stem}.received.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def wait_for_scored(run: Listening, out: Path, studies: int, outcome: str = "scored") -> None:
    while sum(r["outcome"] == outcome for r in received(out)) < studies:
        assert run.proc.poll() is None, run.text()
        time.sleep(0.2)


def study_files(export: Path) -> dict[str, list[Path]]:
    """The export's files by StudyInstanceUID."""
    studies: dict[str, list[Path]] = {}
    for path in dicom_files(export):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        studies.setdefault(uid, []).append(path)
    return studies


def phi(export: Path) -> set[str]:
    found = set()
    for path in dicom_files(export):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID)}
    return found


@pytest.fixture(scope="module")
def folder_rows(export: Path, package: Path, tmp_path_factory) -> bytes:
    """`cad score` on the export folder (slice rows), the bytes the listener must write."""
    from cad.scoring.api import score_folder

    out = tmp_path_factory.mktemp("folder") / "predictions.csv"
    with pytest.MonkeyPatch.context() as mp:  # the secret the listeners get (conftest._env)
        mp.setenv("CAD_SECRET", SECRET)
        score_folder(package, export, out, level="slice", workers=0, batch_size=8, progress=False)
    return out.read_bytes()


def test_listener_writes_the_rows_of_cad_score(export, package, folder_rows, tmp_path):
    out = tmp_path / "out" / "predictions.csv"
    reports = tmp_path / "reports"
    run = start(package, out, "--study-timeout", "3600", "--report-dir", str(reports))
    files = dicom_files(export)
    orphan = pydicom.dcmread(files[0])  # an image without its study: cannot be grouped
    del orphan.StudyInstanceUID
    orphan.SOPInstanceUID = orphan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    orphan.save_as(tmp_path / "orphan.dcm")
    statuses = send(run.port, [*files, tmp_path / "orphan.dcm"])
    is_sr = [f.name == "report_sr.dcm" for f in files]
    assert [s for s, sr in zip(statuses, is_sr, strict=False) if sr] == [0x0122]
    assert {s for s, sr in zip(statuses, is_sr, strict=False) if not sr} == {0x0000}
    assert statuses[-1] == 0xA900
    wait_for_scored(run, out, 2)
    again = [f for f in files if f.parent == files[-1].parent]  # one series sent again
    assert set(send(run.port, again)) == {0x0000}
    wait_for_scored(run, out, 1, "already-scored")
    assert run.stop() == 128 + signal.SIGTERM, run.text()

    assert out.read_bytes() == folder_rows
    rows = received(out)
    refused = [r for r in rows if r["outcome"] == "not-an-image"]
    assert len(refused) == 1 and refused[0]["instances"] == "1"
    assert "Basic Text SR Storage" in refused[0]["reason"]
    scored = [r for r in rows if r["outcome"] == "scored"]
    assert refused[0]["study"] in {r["study"] for r in scored}  # the SR's study: by key
    [orphan_row] = [r for r in rows if r["outcome"] == "unreadable"]
    assert (orphan_row["study"], orphan_row["instances"]) == ("stu-unknown", "1")
    staging = out.parent / "predictions.staged"
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    assert not any((staging / "studies").iterdir())
    # a PHI-free HTML report per scored study (cad score --report-dir), found by pseudonym
    pages = sorted(reports.glob("*/report.html"))
    assert {p.parent.name for p in pages} == {r["study"] for r in scored}
    texts = [run.text()] + [p.read_text() for p in out.parent.glob("predictions*.*") if p.is_file()]
    texts += [p.read_text() for p in pages]
    for value in phi(export):
        assert not any(value in text for text in texts), "an identifier reached an output"


def test_unknown_calling_aet_is_rejected(package, tmp_path):
    out = tmp_path / "predictions.csv"
    run = start(package, out, "--allow-aet", SENDER, "--allow-aet", "OTHER")
    for calling, accepted in ((SENDER, True), ("INTRUDER", False)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", run.port, ae_title="CAD")
        assert assoc.is_established is accepted and assoc.is_rejected is not accepted
        if accepted:
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()
    assert run.stop(signal.SIGINT) == 128 + signal.SIGINT
    log = run.text()
    assert "rejected an association from AE INTRUDER" in log
    assert f"from AE {SENDER}" not in log


def test_sigterm_keeps_a_received_study_and_a_restart_scores_it_once(
    export, package, folder_rows, tmp_path
):
    out = tmp_path / "predictions.csv"
    staged = tmp_path / "predictions.staged" / "studies"
    first = sorted(study_files(export).items())[0][1]
    images = [f for f in first if f.name != "report_sr.dcm"]
    run = start(package, out, "--study-timeout", "3600", "--no-score-on-release")
    assert set(send(run.port, images)) == {0x0000}
    assert run.stop() == 128 + signal.SIGTERM, run.text()
    assert "interrupted (SIGTERM)" in run.text() and "Traceback" not in run.text()
    assert [len(list(d.iterdir())) for d in staged.iterdir()] == [len(images)]
    header = folder_rows.split(b"\n", 1)[0] + b"\n"
    assert out.read_bytes() == header  # received, not scored yet

    run = start(package, out)  # scores the staged study before it listens
    study = received(out)[-1]["study"]
    assert received(out)[-1]["outcome"] == "scored"
    expected = [line for line in folder_rows.splitlines(True) if f",{study},".encode() in line]
    assert out.read_bytes() == header + b"".join(expected) and expected
    assert not any(staged.iterdir())
    assert run.stop() == 128 + signal.SIGTERM

    scored = out.read_bytes()
    run = start(package, out)  # nothing left: nothing scored again
    assert run.stop() == 128 + signal.SIGTERM
    assert out.read_bytes() == scored
    assert sum(r["outcome"] == "scored" for r in received(out)) == 1
    logs = [p.read_text() for p in tmp_path.glob("listen-*.log")]
    assert not any(value in text for value in phi(export) for text in logs)


def test_a_study_still_arriving_at_sigterm_is_cut_off_not_kept(export, package, tmp_path):
    out = tmp_path / "predictions.csv"
    images = [f for f in sorted(study_files(export).items())[0][1] if f.name != "report_sr.dcm"]
    run = start(package, out, "--study-timeout", "3600")
    ae = AE(ae_title=SENDER)
    datasets = [pydicom.dcmread(f) for f in images[:3]]
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", run.port, ae_title="CAD")
    assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0, 0, 0]
    assert run.stop() == 128 + signal.SIGTERM, run.text()  # the association is still open
    assert assoc.is_aborted or not assoc.is_established  # the sender is told
    [row] = [r for r in received(out) if r["outcome"] != "scored"]
    assert (row["outcome"], row["instances"]) == ("cut-off", "3")
    assert not any((tmp_path / "predictions.staged" / "studies").iterdir())
    assert not any((tmp_path / "predictions.staged" / "incoming").iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--level", "patient"], "unknown --level 'patient'"),
        (["--send-results"], "--send-results stores the --dicom-out results into --pacs"),
        (["--study-timeout", "0"], "--study-timeout must be > 0"),
    ],
)
def test_usage_errors_exit_2_before_listening(extra, message, package, tmp_path):
    from typer.testing import CliRunner

    from cad.cli import app

    args = ["listen", "--model", str(package), "--out", str(tmp_path / "p.csv"), "--port", "0"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_outputs_of_another_model_or_level_are_refused(package, tmp_path):
    from cad.errors import CadError
    from cad.pacs.listen import Listener, ListenOptions

    out = tmp_path / "p.csv"
    Listener(ListenOptions(model=str(package), out=out))
    Listener(ListenOptions(model=str(package), out=out))  # the same options continue
    with pytest.raises(CadError, match="different level"):
        Listener(ListenOptions(model=str(package), out=out, level="series"))
    (tmp_path / "q.csv").write_text("someone else's file\n")
    with pytest.raises(CadError, match="not written by cad listen"):
        Listener(ListenOptions(model=str(package), out=tmp_path / "q.csv"))
    (tmp_path / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(CadError, match="--out is a symbolic link"):
        Listener(ListenOptions(model=str(package), out=tmp_path / "link.csv"))
    with pytest.raises(CadError, match="no model package directory"):
        Listener(ListenOptions(model=str(tmp_path / "nowhere"), out=tmp_path / "r.csv"))
    assert not (tmp_path / "r.staged").exists() and not (tmp_path / "r.csv").exists()


def test_results_of_each_study_are_stored_into_the_pacs(
    export, package, orthanc, monkeypatch, tmp_path
):
    from orthanc_server import CAD_AET, PASSWORD, USER

    out, dicom_out = tmp_path / "predictions.csv", tmp_path / "dicom"
    monkeypatch.setenv("CAD_PACS_USER", USER)  # the listener inherits them
    monkeypatch.setenv("CAD_PACS_PASSWORD", PASSWORD)
    images = [f for f in sorted(study_files(export).items())[0][1] if f.name != "report_sr.dcm"]
    run = start(package, out, "--dicom-out", str(dicom_out), "--send-results",
                "--pacs", orthanc.dimse_url, "--calling-aet", CAD_AET)  # fmt: skip
    assert set(send(run.port, images)) == {0x0000}
    try:
        wait_for_scored(run, out, 1, "results-stored")
        assert run.stop() == 128 + signal.SIGTERM, run.text()
        rows = received(out)
        assert [r["outcome"] for r in rows] == ["scored", "results-stored"], rows
        assert rows[1]["instances"] == "2" and rows[1]["reason"] == f"into {orthanc.dimse_url}"
        [sr_path] = dicom_out.glob("*/sr.dcm")
        sr = pydicom.dcmread(sr_path)
        assert str(sr.StudyInstanceUID) == str(pydicom.dcmread(images[0]).StudyInstanceUID)
        assert [h["Type"] for h in orthanc.lookup(str(sr.SOPInstanceUID))] == ["Instance"]
        assert PASSWORD not in run.text() and USER not in run.text()
    finally:  # the Orthanc fixture is shared: later tests expect only the export in it
        orthanc.remove(dicom_out.rglob("*.dcm"))


def test_a_second_listener_on_the_same_outputs_or_a_taken_port_is_refused(package, tmp_path):
    import socket

    from cad.errors import CadError
    from cad.pacs.listen import Listener, ListenOptions

    first = Listener(ListenOptions(model=str(package), out=tmp_path / "p.csv"))
    with pytest.raises(CadError, match="another cad listen writes to"):
        Listener(ListenOptions(model=str(package), out=tmp_path / "p.csv"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        opts = ListenOptions(
            model=str(package), out=tmp_path / "q.csv", port=taken.getsockname()[1]
        )
        with pytest.raises(CadError, match="cannot listen on 127.0.0.1"):
            Listener(opts).serve()
    assert first.scorer.ledger.scored == {}
