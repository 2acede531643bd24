"""The `cad` command: help texts, exit codes and error messages."""

import csv

import pytest
from typer.testing import CliRunner

from cad.cli import app

runner = CliRunner()

COMMANDS = [
    [],
    ["run"],
    ["score"],
    ["listen"],
    ["data"],
    ["data", "check"],
    ["data", "phantom"],
    ["data", "manifest"],
    ["backbones"],
    ["backbones", "list"],
    ["backbones", "inspect"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cad")
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


def test_config_typo_exits_2_with_the_fix(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "pipelines/smoke.yaml",
            "--workdir",
            str(tmp_path),
            "--set",
            "data.phantom.patinets=3",
        ],
    )
    assert result.exit_code == 2
    assert "did you mean 'patients'" in result.output


def test_unknown_force_stage(tmp_path):
    result = runner.invoke(
        app, ["run", "pipelines/smoke.yaml", "--workdir", str(tmp_path), "--force", "probes"]
    )
    assert result.exit_code == 2 and "did you mean 'probe'" in result.output


def test_missing_weights_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = runner.invoke(
        app,
        [
            "run",
            "pipelines/smoke.yaml",
            "--workdir",
            str(tmp_path / "w"),
            "--set",
            "backbones.0.weights=imagenet",
        ],
    )
    assert result.exit_code == 2
    assert "resnet18-f37072fd.pth" in result.output and "checkpoints" in result.output
    assert not (tmp_path / "w" / "artifacts").exists()


def test_phantom_manifest_and_check(tmp_path):
    out = tmp_path / "ph"
    result = runner.invoke(
        app,
        [
            "data",
            "phantom",
            "--out",
            str(out),
            "--patients",
            "4",
            "--slices",
            "10",
            "--size",
            "48",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "m.csv"
    result = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--dicom-root",
            str(out / "dicom"),
            "--boxes",
            str(out / "Annotation_Boxes.csv"),
            "--out",
            str(manifest),
            "--margin",
            "2",
            "--unboxed",
            "negative",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(manifest.open()))
    assert rows and {r["label"] for r in rows} == {"0", "1"}
    assert all(not r["path"].startswith("/") for r in rows)
    result = runner.invoke(app, ["data", "check", str(out / "dicom")])
    assert result.exit_code == 0, result.output
    (out / "dicom" / "notes.txt").write_text("not a DICOM file")
    report = tmp_path / "report.csv"
    result = runner.invoke(app, ["data", "check", str(out / "dicom"), "--report", str(report)])
    assert result.exit_code == 1
    assert "not-dicom" in result.output
    lines = list(csv.DictReader(report.open()))
    assert sum(r["outcome"] == "not-dicom" for r in lines) == 1
    assert str(tmp_path) not in report.read_text()


def test_backbones_inspect_lists_nodes_with_shapes():
    result = runner.invoke(app, ["backbones", "inspect", "lenet5"])
    assert result.exit_code == 0, result.output
    assert "output shape" in result.output
    result = runner.invoke(app, ["backbones", "inspect", "resnet5"])
    assert result.exit_code == 2 and "did you mean 'resnet50'" in result.output


@pytest.mark.slow
def test_backbones_list_json_whole_registry():
    _check_list()


def test_backbones_list_json(monkeypatch):
    """The same command over a few registry entries (the whole registry is the slow variant)."""
    import cad.backbones as backbones

    few = [
        backbones.get_spec(n)
        for n in ("vgg16", "inception_v3", "resnet50", "lenet5", "hybridsn", "googlenet")
    ]
    monkeypatch.setattr(backbones, "list_specs", lambda: few)
    _check_list()


def _check_list():
    import json

    result = runner.invoke(app, ["backbones", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"vgg16", "inception_v3", "resnet50", "lenet5", "hybridsn", "googlenet"} <= set(rows)
    assert rows["resnet50"]["pretrained"] and not rows["lenet5"]["pretrained"]
    assert rows["resnet50"]["nodes"] == 5
    assert rows["resnet50"]["gflops"] is None  # nothing is built without --verbose


def test_tables_sent_to_a_pipe_keep_names_whole():
    """A narrow COLUMNS (as in CI logs or `| tee`) must not cut node names to `Mixed_…`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cad.backbones.registry import get_spec

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "cad.cli", "backbones", "inspect", "inception_v3"],
        env={**os.environ, "COLUMNS": "40", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.stdout + out.stderr
    assert "…" not in text
    assert all(node in text for node in get_spec("inception_v3").nodes)
