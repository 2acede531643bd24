"""A half-created sqlite MLflow store (kill -9 during its creation) no longer breaks
tracking for the workdir: moved aside when it holds no runs, reported with the fix if not."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from cad.tracking import Tracker


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """A freshly created store, and one holding a run."""
    root = tmp_path_factory.mktemp("stores")
    empty, full = root / "empty" / "mlflow.db", root / "full" / "mlflow.db"
    Tracker(f"sqlite:///{empty}", "exp").experiment_id  # noqa: B018 - creates the tables
    tracker = Tracker(f"sqlite:///{full}", "exp")
    tracker.end_run(tracker.start_run("one"))
    assert empty.is_file() and full.is_file() and tracker.ok
    return {"empty": empty, "full": full}


def _copy(template: Path, workdir: Path) -> Path:
    workdir.mkdir()
    return Path(shutil.copy(template, workdir / "mlflow.db"))


def _drop_version_table(db: Path) -> None:
    with sqlite3.connect(db) as conn:  # what a kill between create_all and the migrations leaves
        conn.execute("DROP TABLE alembic_version")


@pytest.mark.parametrize("damage", ["truncated", "no-version-table", "mid-migration"])
def test_a_half_created_store_without_runs_is_moved_aside_and_recreated(
    templates, tmp_path, damage
):
    db = _copy(templates["empty"], tmp_path / "w")
    if damage == "truncated":
        db.write_bytes(db.read_bytes()[:3000])
    elif damage == "no-version-table":
        _drop_version_table(db)
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    tracker = Tracker(f"sqlite:///{db}", "exp")
    run = tracker.start_run("after")
    tracker.end_run(run)
    assert run is not None and tracker.ok, tracker.failures
    assert len(list(db.parent.glob("mlflow.db.broken-*"))) == 1


def test_a_damaged_store_holding_runs_is_kept_and_reported_with_the_fix(templates, tmp_path):
    db = _copy(templates["full"], tmp_path / "w")
    _drop_version_table(db)
    before = db.read_bytes()
    tracker = Tracker(f"sqlite:///{db}", "exp")
    assert tracker.start_run("after") is None and not tracker.ok
    message = " ".join(tracker.failures)
    assert str(db) in message and "mlflow db upgrade" in message and "1 runs" in message
    assert db.read_bytes() == before and not list(db.parent.glob("*.broken-*"))
