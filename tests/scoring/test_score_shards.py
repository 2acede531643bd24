"""``cad score --shard K/N`` and ``cad score merge``: the merged files are byte-identical
to one unsharded run's, whatever N, and a shard set that is incomplete is refused."""

from __future__ import annotations

import csv

import pytest
from score_helpers import SECRET

from cad.errors import CadError
from cad.io.index import shard_of
from cad.scoring.api import score_folder
from cad.scoring.merge import merge_shards


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("CAD_SECRET", SECRET)


def _patients(path):
    with open(path, newline="") as handle:
        return [r["patient"] for r in csv.DictReader(handle)]


@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_unsharded_run(export, package, baseline, tmp_path, n):
    options = baseline.options
    outs, keys = [], []
    for k in range(1, n + 1):
        out, key = tmp_path / f"shard{k}.csv", tmp_path / f"shard{k}.keys.csv"
        score_folder(package, export.root, out, key_map=key, shard=f"{k}/{n}", **options)
        mine = set(_patients(out))
        assert all(shard_of(p, n) == k for p in mine)  # each patient in its own shard
        outs.append(out)
        keys.append(key)
    assert sum(len(set(_patients(o))) for o in outs) == len(set(_patients(baseline.out)))
    merged = tmp_path / "merged.csv"
    summary = merge_shards(outs[::-1], merged, None, keys[::-1], tmp_path / "merged.keys.csv")
    assert merged.read_bytes() == baseline.out.read_bytes()
    errors = baseline.out.with_name("p.errors.csv")
    assert (tmp_path / "merged.errors.csv").read_bytes() == errors.read_bytes()
    assert (tmp_path / "merged.keys.csv").read_bytes() == baseline.key_map.read_bytes()
    for field in ("files", "studies", "studies_scored", "slices", "skipped", "errors"):
        assert getattr(summary, field) == getattr(baseline.summary, field), field
    assert summary.exit_code == baseline.summary.exit_code


def test_incomplete_or_mixed_shard_sets_are_refused(export, package, baseline, tmp_path):
    options = baseline.options
    first = tmp_path / "a1.csv"
    score_folder(package, export.root, first, shard="1/2", **options)
    with pytest.raises(CadError, match="complete set"):
        merge_shards([first], tmp_path / "m.csv")
    other = tmp_path / "b2.csv"
    score_folder(package, export.root, other, shard="2/2", **{**options, "level": "series"})
    with pytest.raises(CadError, match="different models, folders or options"):
        merge_shards([first, other], tmp_path / "m.csv")
    with pytest.raises(CadError, match="K/N"):
        score_folder(package, export.root, tmp_path / "x.csv", shard="3/2", **options)
    with pytest.raises(CadError, match="no progress or segments file"):
        merge_shards([baseline.out], tmp_path / "m.csv")
