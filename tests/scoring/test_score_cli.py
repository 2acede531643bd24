"""``cad score`` end to end on a mixed export: rows, typed errors, no PHI, exit codes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from score_helpers import SECRET, SLICES
from typer.testing import CliRunner

from cad.cli import app
from cad.errors import CadError
from cad.phi import Pseudonymizer
from cad.scoring.api import score_folder

PSEUDO = Pseudonymizer(SECRET.encode())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mixed_export_scores_good_slices_and_types_every_bad_file(export, package, tmp_path):
    out, errors = tmp_path / "out" / "predictions.csv", tmp_path / "errors.csv"
    cams = tmp_path / "cam"
    result = CliRunner().invoke(
        app,
        [
            "score",
            str(export.root),
            "--model",
            str(package),
            "--out",
            str(out),
            "--errors",
            str(errors),
            "--workers",
            "2",
            "--batch-size",
            "16",
            "--cam",
            str(cams),
        ],
    )
    assert result.exit_code == 1, result.output  # some files failed, the rest were scored

    rows = read_rows(out)
    assert {r["level"] for r in rows} == {"slice"}
    expected = {PSEUDO.slice(uid, i) for uid in export.scored_studies for i in range(SLICES)}
    assert [r["sample"] for r in rows if r["sample"] in expected] == [r["sample"] for r in rows]
    assert len(rows) == len(expected) == len({r["sample"] for r in rows})  # one row per slice
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert all(r["label"] == str(int(float(r["probability"]) >= 0.5)) for r in rows)
    keys = [(r["patient"], r["study"]) for r in rows]
    assert keys == sorted(keys)  # deterministic order: patient key, study key, slice index

    failed = {r["file"]: r for r in read_rows(errors)}
    assert len(failed) == len(read_rows(errors))  # one row per file
    for path, outcome in export.bad.items():
        assert failed[PSEUDO.file(path)]["outcome"] == outcome, path.name
    study_rows = [failed[PSEUDO.file(p)] for p in export.missing_phase_files]
    assert {r["outcome"] for r in study_rows} <= {"missing-phase", "ambiguous-geometry"}
    assert sum(r["outcome"] == "missing-phase" for r in study_rows) >= 2 * SLICES  # t1 + pre
    assert len(failed) == len(export.bad) + len(export.missing_phase_files)
    assert PSEUDO.file(export.compressed) not in failed  # the RLE-compressed slice was scored

    # No PHI anywhere: outputs, file names, console and log output.
    texts = {
        "predictions": out.read_text(),
        "errors": errors.read_text(),
        "cam names": " ".join(p.name for p in cams.iterdir()),
        "console": result.output,
    }
    for what, text in texts.items():
        leaked = [value for value in export.phi if value in text]
        assert not leaked, f"{what} leaks {leaked[:3]}"
    assert "cad score" in result.output and "not scored: corrupt" in result.output


def test_summary_accounts_for_every_file(export, package, tmp_path):
    summary = score_folder(package, export.root, tmp_path / "p.csv", workers=0, progress=False)
    files = sum(1 for p in export.root.rglob("*") if p.is_file())
    assert summary.files == files
    assert summary.scored_files + summary.skipped + summary.error_files == files
    assert summary.slices == len(export.scored_studies) * SLICES
    assert summary.studies == len(export.scored_studies) + 1 and summary.studies_scored == 3
    assert summary.scored_files == 3 * 2 * SLICES  # pre + post1 of each scored study
    assert summary.errors["corrupt"] == 1 and summary.errors["not-an-image"] == 2
    assert summary.exit_code == 1
    assert (tmp_path / "p.errors.csv").is_file()  # default errors path


def test_clean_export_exits_zero(export, package, tmp_path):
    patient = next(p for p in sorted(export.root.iterdir()) if p.name.startswith("Breast"))
    clean_copy = tmp_path / "copy"
    shutil.copytree(patient, clean_copy / patient.name)
    result = CliRunner().invoke(
        app,
        [
            "score",
            str(clean_copy),
            "--model",
            str(package),
            "--out",
            str(tmp_path / "p.csv"),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "p.csv")) == SLICES
    assert read_rows(tmp_path / "p.errors.csv") == []


def test_tampered_package_is_refused_with_exit_code_2(export, model_factory, tmp_path):
    tampered = tmp_path / "model"
    shutil.copytree(model_factory(0.5), tampered)
    meta = tampered / "model.json"
    meta.write_text(meta.read_text().replace('"threshold": 0.5', '"threshold": 0.01'))
    result = CliRunner().invoke(
        app, ["score", str(export.root), "--model", str(tampered), "--out", str(tmp_path / "p.csv")]
    )
    assert result.exit_code == 2
    assert "SHA-256" in result.output and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("option", ["--out", "--key-map", "--errors"])
def test_usage_errors_exit_2(export, package, tmp_path, option):
    args = {"--out": str(tmp_path / "p.csv")}
    if option == "--out":
        args["--out"] = str(export.root / "predictions.csv")  # inside the scanned folder
    elif option == "--key-map":
        args["--key-map"] = args["--out"]  # re-identification data inside the predictions
    else:
        args["--errors"] = args["--out"]
    flat = [item for pair in args.items() for item in pair]
    result = CliRunner().invoke(app, ["score", str(export.root), "--model", str(package), *flat])
    assert result.exit_code == 2, result.output
    assert str(export.root) not in result.output  # no input paths in messages


def test_bad_level_and_missing_model(export, package, tmp_path):
    with pytest.raises(CadError, match="did you mean 'patient'"):
        score_folder(package, export.root, tmp_path / "p.csv", level="patients")
    with pytest.raises(CadError, match="no model package directory"):
        score_folder(tmp_path / "nowhere", export.root, tmp_path / "p.csv")


def test_a_nan_threshold_with_regenerated_checksums_is_refused(tmp_path):
    """The finding: model.json edited to threshold NaN and SHA256SUMS regenerated labelled
    every slice 0; now the package is refused by name with the fix."""
    import json

    from score_helpers import make_model, package_meta

    from cad.artifacts.model_package import META, SUMS, sha256_file
    from cad.errors import ModelPackageError
    from cad.finetune.package import load_package, save_package

    package = tmp_path / "model"
    save_package(make_model(), package_meta(0.5), package)
    meta = json.loads((package / META).read_text())
    meta["threshold"] = float("nan")
    (package / META).write_text(json.dumps(meta))  # json writes NaN, as an editor could
    sums = (package / SUMS).read_text().splitlines()
    (package / SUMS).write_text(
        "".join(
            f"{sha256_file(package / name)}  {name}\n"
            for name in (line.partition("  ")[2] for line in sums)
        )
    )
    with pytest.raises(ModelPackageError, match="threshold"):
        load_package(package)
