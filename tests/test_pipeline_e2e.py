"""The whole pipeline on the tiny phantom (pipelines/smoke.yaml), asserting behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow_processes import mlflow_server, rendered_text
from safetensors.torch import load_file

from cad.api import run_pipeline
from cad.backbones import create_backbone
from cad.config import load_config
from cad.log import setup_logging
from cad.pipeline.graph import CHAIN_STAGES, STAGE_NAMES
from cad.pipeline.stages.layers import BACKBONE_SEED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    cfg = load_config(ROOT / "pipelines/smoke.yaml", ["transfer.rounds=2"])
    setup_logging(workdir / "logs" / "run.log", verbose=True)  # every log line is PHI-checked
    result = run_pipeline(cfg, workdir)
    return cfg, workdir, result


def test_summary_and_report_are_written(smoke):
    cfg, workdir, result = smoke
    summary = json.loads((workdir / "summary.json").read_text())
    assert (workdir / "report.md").read_text().startswith("# cad report: smoke")
    assert [(r["backbone"], r["round"]) for r in summary["results"]] == [
        ("resnet18", 1),
        ("resnet18", 2),
    ]
    sizes = summary["data"]["splits"]
    assert set(sizes) == {"train", "val", "test"}
    assert sum(s["patients"] for s in sizes.values()) == cfg.data.phantom.patients
    for r in summary["results"]:
        assert set(r["test"]) >= {
            "f1",
            "roc_auc",
            "accuracy",
            "sensitivity",
            "specificity",
            "ppv",
            "npv",
        }
        assert r["test"]["f1"]["low"] <= r["test"]["f1"]["value"] <= r["test"]["f1"]["high"]
        assert r["calibration"] == "temperature"  # fitted on validation, carried by the package
        assert 0 <= r["test_operating"]["ece"] <= 1 and 0 <= r["test_operating"]["brier"] <= 1
        # the same test probabilities before calibration, for comparison
        assert 0 <= r["test_operating"]["ece_uncalibrated"] <= 1
        assert 0 <= r["test_patient_operating"]["brier_uncalibrated"] <= 1
        evaluate = workdir / "artifacts" / f"evaluate-{r['artifacts']['evaluate']}"
        assert (evaluate / "reliability.png").is_file()
        assert (evaluate / "decision_curve.png").is_file()
        assert (workdir / r["model_dir"] / "model.safetensors").is_file()
        assert Path(r["model_dir_abs"]).samefile(workdir / r["model_dir"])
        # the package summary.json names is the evaluated one: its card holds the test metrics
        card = (workdir / r["model_dir"] / "model_card.md").read_text()
        assert f"| F1 | {r['test']['f1']['value']:.3f} |" in card
        assert "model_card.md" in (workdir / r["model_dir"] / "SHA256SUMS").read_text()
        finetune = workdir / "artifacts" / f"finetune-{r['artifacts']['finetune']}" / "model"
        assert "Not yet evaluated" in (finetune / "model_card.md").read_text()
    optional = {"denoise"}  # the smoke pipeline does not denoise
    assert {s["stage"] for s in summary["stages"]} == set(STAGE_NAMES) - optional
    chain_labels = [s["label"] for s in summary["stages"] if s["stage"] in CHAIN_STAGES]
    # round 2 starts from round 1's model: only round 1 reads the pretrain stage
    expected = [f"{st}[resnet18 r{r}]" for r in (1, 2) for st in CHAIN_STAGES]
    assert chain_labels == [label for label in expected if label != "pretrain[resnet18 r2]"]
    assert summary["results"][0]["weights_source"].startswith("pretrain:shapes-1 3 steps")
    assert "cad's offline source" in (workdir / "report.md").read_text()
    assert "| ECE | ECE uncal. | Brier | Brier uncal. |" in (workdir / "report.md").read_text()
    assert summary["best"]["backbone"] == "resnet18"


def test_node_choice_follows_probe_scores(smoke):
    _, _, result = smoke
    for chain in result.chains:
        rows = chain.probe.scores()
        best = max(r.f1_mean for r in rows)
        shallowest_best = min((r.depth, r.node) for r in rows if r.f1_mean == best)[1]
        meta = chain.finetune.model_meta()
        assert meta.nodes.finetune == shallowest_best == chain.probe.choice().finetune
        nodes = [r.node for r in rows]
        assert nodes.index(meta.nodes.connection) >= nodes.index(meta.nodes.finetune)


def test_round2_candidates_stop_at_round1_connection(smoke):
    _, _, result = smoke
    r1, r2 = result.chains
    conn1 = r1.finetune.model_meta().nodes.connection
    nodes2 = [n.node for n in r2.extract.index().nodes]
    assert nodes2[-1] == conn1


def test_frozen_bits_equal_the_pretrained_backbone(smoke):
    _, workdir, result = smoke
    chain = result.chains[0]
    meta = chain.finetune.model_meta()
    (pretrained,) = (workdir / "artifacts").glob("pretrain-*/weights.safetensors")
    initial = create_backbone("resnet18", "pretrain", 3, pretrained=pretrained).model.state_dict()
    with torch.random.fork_rng():
        torch.manual_seed(BACKBONE_SEED)
        random = create_backbone("resnet18", weights="random", in_chans=3).model.state_dict()
    assert not torch.equal(initial["conv1.weight"], random["conv1.weight"])
    trained = load_file(str(chain.finetune.package / "model.safetensors"))
    node = meta.nodes.finetune  # e.g. "layer2.1.relu_1": layers 1..2 are frozen
    depth = int(node[5]) if node.startswith("layer") else 0
    frozen_prefix = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, depth + 1))
    checked = 0
    for key, value in trained.items():
        name = key.removeprefix("body.")
        if key.startswith("body.") and name.startswith(frozen_prefix):
            assert torch.equal(value, initial[name]), name
            checked += 1
    assert checked > 0


def test_no_test_patient_reaches_probe_or_finetune(smoke):
    _, _, result = smoke
    splits = result.data.split.assignment()
    test = set(splits.test) | set(splits.val)
    train_patients = {s.patient for s in result.data.augment.samples()}
    assert train_patients and not train_patients & test
    assert set(splits.folds) == set(splits.train)
    for chain in result.chains:
        for matrix in chain.extract.load().values():
            assert matrix.shape[0] == len(result.data.augment.samples())


def test_summary_matches_mlflow(smoke, tmp_path):
    _, workdir, _ = smoke
    summary = json.loads((workdir / "summary.json").read_text())
    tracking = summary["tracking"]
    assert tracking["ok"], tracking["failures"]
    client = MlflowClient(tracking["uri"])
    parent = client.get_run(tracking["parent_run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.params["finetune.epochs"] == "1"
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "comparison.md",
        "comparison.csv",
        "layer_f1_comparison.png",
        "test_metrics_comparison.png",
        "roc_comparison.png",
    } <= parent_files
    deepest = max(create_backbone("resnet18").spec.node_depths)
    for r in summary["results"]:
        run = client.get_run(r["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == tracking["parent_run_id"]
        assert run.data.tags["finetune_node"] == r["nodes"]["finetune"]
        assert run.data.params["finetune.epochs"] == "1"  # the full config, not 5 params
        assert run.data.params["backbones.0.name"] == r["backbone"]
        assert run.data.metrics["test_f1"] == pytest.approx(r["test"]["f1"]["value"])
        assert run.data.metrics["probe_f1_best"] == pytest.approx(r["probe"]["finetune_f1"])
        assert run.data.metrics["probe_chance_f1"] == pytest.approx(
            r["probe"]["chance_f1_all_positive"]
        )
        steps = client.get_metric_history(run.info.run_id, "probe_f1")
        expected = [round(100 * s["depth"] / deepest) for s in r["layer_scores"]]
        assert sorted(m.step for m in steps) == sorted(expected)
        assert all(0 <= m.step <= 100 for m in steps)
        chain_wall = sum(
            s["wall_s"] for s in summary["stages"] if s["label"].endswith(f"r{r['round']}]")
        )
        took = (run.info.end_time - run.info.start_time) / 1000
        assert took >= chain_wall * 0.9  # the chain's real duration, not the logging time
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"layer_f1.png", "probe_nodes.json", "model"} <= files
        assert parent.info.start_time <= run.info.start_time  # the parent spans the run
        assert parent.info.end_time >= run.info.end_time
    alias = client.get_model_version_by_alias("cad-smoke", "champion")
    assert alias.tags["backbone"] == summary["best"]["backbone"]
    assert alias.tags["round"] == str(summary["best"]["round"])
    best = next(
        r
        for r in summary["results"]
        if (r["backbone"], r["round"]) == (summary["best"]["backbone"], summary["best"]["round"])
    )
    assert alias.run_id == best["mlflow_run_id"]
    # the registered model carries the model card with the test metrics
    card = Path(client.download_artifacts(alias.run_id, "model/model_card.md", str(tmp_path)))
    assert f"| F1 | {best['test']['f1']['value']:.3f} |" in card.read_text()


def test_the_mlflow_ui_opens_on_the_backbone_comparison(smoke, tmp_path):
    """What a person sees: the link cad prints, opened in headless Chromium against a real
    ``mlflow server`` on the run's store, shows the model-training runs page with every
    backbone run listed flat, best test ROC AUC first, and the comparison columns."""
    _, workdir, _ = smoke
    summary = json.loads((workdir / "summary.json").read_text())
    link = summary["tracking"]["ui_link"]
    assert "viewStateShareKey=" in link and "workflowType=machine_learning" in link
    titles = {r["mlflow_run_id"]: f"{r['backbone']} round {r['round']}" for r in summary["results"]}
    by_auc = sorted(summary["results"], key=lambda r: -r["test"]["roc_auc"]["value"])
    experiment, parent = link.split("/")[2], summary["tracking"]["parent_run_id"]
    children = json.dumps(list(titles))
    with mlflow_server(tmp_path, summary["tracking"]["uri"]) as url:
        text = rendered_text(f"{url}/{link}", expect=titles[by_auc[-1]["mlflow_run_id"]])
        artifacts = rendered_text(
            f"{url}/#/experiments/{experiment}/runs/{parent}/artifacts", expect="roc_comparison"
        )
        compared = rendered_text(
            f"{url}/#/compare-runs?runs={children}&experiments=[%22{experiment}%22]",
            expect="probe_f1",
        )
    for name in ("comparison.md", "layer_f1_comparison.png", "test_metrics_comparison.png"):
        assert name in artifacts, name  # the parent's at-a-glance comparison is listed
    assert f"Comparing {len(titles)} Runs" in compared and "probe_f1" in compared
    assert all(title in compared for title in titles.values())
    assert text.startswith("Runs - Experiment"), text[:300]  # not the GenAI traces page
    for column in ("probe_f1_best", "probe_chance_f1", "test_roc_auc", "test_f1", "test_ece"):
        assert column in text, column
    positions = [text.find(titles[r["mlflow_run_id"]]) for r in by_auc]
    assert -1 not in positions, (positions, text[:2000])  # children are not folded away
    if by_auc[0]["test"]["roc_auc"]["value"] > by_auc[-1]["test"]["roc_auc"]["value"]:
        assert positions == sorted(positions)


def test_a_rerun_that_computes_nothing_adds_no_runs_to_the_comparison(smoke):
    """Every stage reused, logged before to the same store: the summary points at the
    earlier runs and MLflow holds no duplicate rows; a deleted earlier run is logged anew."""
    cfg, workdir, _ = smoke
    before = json.loads((workdir / "summary.json").read_text())["tracking"]
    client = MlflowClient(before["uri"])
    experiment = client.get_run(before["parent_run_id"]).info.experiment_id
    count = len(client.search_runs([experiment]))
    again = run_pipeline(cfg, workdir)
    assert all(r.reused for r in again.records)
    after = json.loads((workdir / "summary.json").read_text())
    assert after["tracking"]["parent_run_id"] == before["parent_run_id"]
    assert after["tracking"]["child_runs"] == before["child_runs"]
    assert [r["mlflow_run_id"] for r in after["results"]] == list(before["child_runs"].values())
    assert len(client.search_runs([experiment])) == count
    client.delete_run(before["parent_run_id"])  # the user removed it: log the run again
    run_pipeline(cfg, workdir)
    relogged = json.loads((workdir / "summary.json").read_text())["tracking"]
    assert relogged["ok"] and relogged["parent_run_id"] != before["parent_run_id"]
    assert not set(relogged["child_runs"].values()) & set(before["child_runs"].values())


def test_no_phi_in_any_output(smoke):
    _, workdir, result = smoke
    dicom_root = (
        next(p for p in (workdir / "artifacts").iterdir() if p.name.startswith("phantom-"))
        / "dicom"
    )
    ds = pydicom.dcmread(next(dicom_root.rglob("*.dcm")), stop_before_pixels=True)
    forbidden = {
        str(ds.PatientName),
        ds.PatientID,
        ds.PatientBirthDate,
        ds.AccessionNumber,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        str(dicom_root),
    }
    forbidden = {f for f in forbidden if f}
    checked = 0
    for path in workdir.rglob("*"):
        rel = path.relative_to(workdir)
        if not path.is_file() or path.suffix in {".npy", ".safetensors", ".png", ".dcm"}:
            continue
        if rel.parts[0] == "artifacts" and rel.parts[1].startswith(("phantom-", "manifest-")):
            continue  # the input archive and its manifest: identifiers there are the input itself
        text = path.read_bytes().decode("latin-1")
        for value in forbidden:
            assert value not in text, f"{value!r} leaked into {rel}"
        checked += 1
    assert checked > 10
    assert "ingest: running" in (workdir / "logs" / "run.log").read_text()


def test_rerun_reuses_everything_and_changes_redo_only_downstream(smoke, tmp_path):
    cfg, workdir, _ = smoke
    again = run_pipeline(cfg, workdir, track=False)
    assert all(r.reused for r in again.records)
    changed = load_config(
        ROOT / "pipelines/smoke.yaml", ["transfer.rounds=2", "evaluate.bootstrap=60"]
    )
    third = run_pipeline(changed, workdir, track=False)
    ran = {r.stage for r in third.records if not r.reused}
    assert ran == {"evaluate"}


def test_denoise_stage_trains_dncnn_and_packages_it(smoke, tmp_path):
    """DnCNN as a preprocessing stage: measured on validation slices, shipped in the package."""
    from cad.finetune.package import load_package

    cfg = load_config(
        ROOT / "pipelines/smoke.yaml",
        ["denoise.enabled=true", "denoise.epochs=4", "denoise.depth=4", "denoise.sigma=0.1"],
    )
    result = run_pipeline(cfg, smoke[1], track=False)
    ran = {r.stage for r in result.records if not r.reused}
    # the pretrained weights do not depend on the data: denoising reuses them
    assert ran == {"denoise", "augment", *CHAIN_STAGES} - {"pretrain"}
    metrics = result.data.denoise.metrics
    assert metrics["val_psnr_denoised_db"] > metrics["val_psnr_noisy_db"]
    loaded = load_package(result.chains[0].finetune.package)
    assert loaded.denoiser is not None
    raw = np.asarray(result.data.ingest.images()[:4])
    np.testing.assert_allclose(
        loaded.prepare_images(raw), np.asarray(result.data.images.images()[:4]), atol=1e-6
    )


def test_compare_prints_and_writes_the_run_table(smoke, tmp_path):
    import csv

    from typer.testing import CliRunner

    from cad.cli import app

    _, workdir, _ = smoke
    out, page = tmp_path / "table.csv", tmp_path / "compare.html"
    result = CliRunner().invoke(
        app, ["compare", str(workdir), "--csv", str(out), "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    assert page.read_text().count('src="data:image/png;base64,') == 3  # the page stands alone
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((workdir / "summary.json").read_text())
    assert [(r["backbone"], r["round"]) for r in rows] == [
        (r["backbone"], str(r["round"])) for r in summary["results"]
    ]
    assert (workdir / "comparison.csv").read_text() == out.read_text()
    seen = rendered_text(page.as_uri(), expect=rows[0]["fine-tuning node"])
    for row in rows:  # what a person sees in a browser: every row's backbone and nodes
        assert row["backbone"] in seen and row["fine-tuning node"] in seen
