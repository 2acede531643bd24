"""A workdir's sqlite MLflow store, checked before MLflow opens it.

A ``kill -9`` while MLflow creates its database (tables first, then a chain of alembic
migrations) leaves a file MLflow can neither use nor repair: the tables half made, the
``alembic_version`` row missing or mid-chain. Such a file is moved aside (never deleted)
when it holds no runs, so MLflow creates a fresh one; one that holds runs is reported with
the file and the fix, since only its owner can decide to migrate or drop it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("cad.tracking")
CORE_TABLES = ("experiments", "runs", "metrics", "params", "tags")


class BrokenStore(Exception):
    """The sqlite store holds runs but is damaged; the message names the file and the fix."""


def latest_revision() -> str | None:
    """The schema revision this MLflow creates (None if it cannot say)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return str(_get_latest_schema_revision())
    except Exception:  # noqa: BLE001 - a private helper: without it, skip the revision check
        return None


def _inspect(db: Path) -> tuple[str, int]:
    """(problem or "", runs in the file); raises sqlite3.DatabaseError if not a database."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return "the database file is damaged", _count_runs(conn)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return "", 0  # empty: MLflow creates the tables
        runs = _count_runs(conn)
        if "alembic_version" not in tables:
            return "the schema version table (alembic_version) is missing", runs
        missing = [t for t in CORE_TABLES if t not in tables]
        if missing:
            return f"tables are missing ({', '.join(missing)})", runs
        found = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
        head = latest_revision()
        if head is not None and found != [head]:
            return f"the schema stopped at version {found or 'none'} of {head}", runs
        return "", runs


def _count_runs(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0


def repair_sqlite_store(db: Path) -> Path | None:
    """Check ``db``; move a broken file that holds no runs aside (returns where to), raise
    :class:`BrokenStore` for one that holds runs, return None for a healthy or absent one."""
    if not db.is_file():
        return None
    try:
        problem, runs = _inspect(db)
    except sqlite3.DatabaseError:
        problem, runs = "the file is not an sqlite database (truncated or overwritten)", 0
    if not problem:
        return None
    if runs:
        raise BrokenStore(
            f"the MLflow database {db} is damaged ({problem}) and holds {runs} runs: back it "
            f"up, then run `mlflow db upgrade sqlite:///{db}`, or move it aside to start a "
            "new one (artifacts and summary.json in the workdir are unaffected)"
        )
    aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    db.rename(aside)
    for suffix in ("-journal", "-wal", "-shm"):  # sqlite's side files belong to the old one
        side = db.with_name(db.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix))
    log.warning(
        "MLflow database %s was left half-created (%s) and held no runs: moved to %s, "
        "a new one is created",
        db,
        problem,
        aside.name,
    )
    return aside
