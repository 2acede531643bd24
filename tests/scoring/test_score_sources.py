"""Models from MLflow URIs, and worker crashes that must not lose the other studies."""

from __future__ import annotations

import pytest
from score_crash_task import crash_on_two

from cad.errors import ModelPackageError
from cad.io.pool import WorkerPool
from cad.scoring.api import score_folder


def test_runs_uri_resolves_to_the_same_scores(export, package, baseline, tmp_path):
    from cad.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "scoring-test")
    run_id = tracker.start_run("finetune")
    tracker.log_artifacts(run_id, package, "model")
    tracker.end_run(run_id)
    assert tracker.ok, tracker.failures

    out = tmp_path / "p.csv"
    score_folder(f"runs:/{run_id}/model", export.root, out, tracking_uri=uri, **baseline.options)
    assert out.read_bytes() == baseline.out.read_bytes()
    with pytest.raises(ModelPackageError, match="cannot fetch"):
        score_folder(
            "runs:/0123456789abcdef/model",
            export.root,
            out,
            tracking_uri=uri,
            workers=0,
            progress=False,
        )


def test_a_dying_worker_costs_only_its_own_task():
    with WorkerPool(1) as pool:
        results = list(
            pool.imap(
                crash_on_two,
                [(1,), (2,), (3,), (4,)],
                inflight=3,
                on_crash=lambda value: f"crashed {value}",
            )
        )
    assert results == ["ok 1", "crashed 2", "ok 3", "ok 4"]


def test_models_uri_without_a_store_here_says_where_to_look(export, tmp_path, monkeypatch):
    from cad.errors import CadError
    from cad.scoring.api import score_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(CadError, match="no MLflow store in this folder.*--tracking-uri"):
        score_folder("models:/cad-breast-mri@champion", export.root, tmp_path / "p.csv")
    assert not (tmp_path / "mlflow.db").exists()  # no empty store left behind
