from pathlib import Path

import pytest

from cad.config import apply_overrides, dump_config, flatten, flatten_params, load_config, validate
from cad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_pipeline_validates():
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.backbones, path


def test_main_pipeline_includes_fragments():
    cfg = load_config(ROOT / "pipelines/breast_mri.yaml")
    assert [b.name for b in cfg.backbones] == ["vgg16", "inception_v3", "resnet50"]
    assert all(b.weights == "imagenet" and b.fallback == "pretrain" for b in cfg.backbones)
    assert cfg.augment.mode == "offline" and cfg.augment.copies == 1


def test_typo_names_path_and_nearest_key():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "pipelines/smoke.yaml", ["data.phantom.patinets=3"])
    assert "data.phantom.patinets: unknown key; did you mean 'patients'?" in str(err.value)


def test_bad_value_names_path_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "pipelines/smoke.yaml", ["split.test=0.9"])
    assert "split.test" in str(err.value) and "0.9" in str(err.value)


def test_override_is_revalidated_and_typed():
    cfg = load_config(
        ROOT / "pipelines/smoke.yaml", ["finetune.epochs=3", "backbones.0.name=vgg11"]
    )
    assert cfg.finetune.epochs == 3 and cfg.backbones[0].name == "vgg11"
    with pytest.raises(ConfigError):
        load_config(ROOT / "pipelines/smoke.yaml", ["finetune.epochs=zero"])


def test_override_needs_key_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["finetune.epochs"])


def test_bad_phase_expression():
    with pytest.raises(ConfigError, match="phases"):
        validate({"input": {"phases": ["pre", "arterial"]}})


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "pipelines/breast_mri.yaml")
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    flat = flatten(cfg)
    assert flat["backbones.0.name"] == "vgg16" and flat["finetune.epochs"] == "6"


def test_flattened_params_carry_no_input_paths():
    cfg = load_config(
        ROOT / "pipelines/smoke.yaml",
        ["data.manifest=/data/Breast_MRI_001/m.csv", "data.root=/data/Breast_MRI_001"],
    )
    flat = flatten_params(cfg)
    assert not any("Breast_MRI_001" in v for v in flat.values())
    assert flat["data.root"].startswith("path-sha256:")


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("loop", "include loop"),
        ("include_number", "include entries must be file names"),
        ("binary", "binary"),
        ("folder", "is a folder"),
        ("name_escapes", "name"),
    ],
)
def test_hostile_pipeline_files_are_typed_config_errors(tmp_path, case, match):
    if case == "loop":
        _write(tmp_path / "b.yaml", "include: [a.yaml]\n")
        path = _write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    elif case == "include_number":
        path = _write(tmp_path / "a.yaml", "include: [5]\n")
    elif case == "binary":
        path = _write(tmp_path / "a.yaml", b"\x7fELF\x00\x01\x02")
    elif case == "folder":
        path = tmp_path
    else:  # the default workdir is runs/<name>: a name must not leave runs/
        path = _write(tmp_path / "a.yaml", "name: ../../x\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


@pytest.mark.parametrize(
    "override, match",
    [
        ("input.size=100000", "input.size"),
        ("finetune.lr=.inf", "finetune.lr"),
        ("finetune.lr=.nan", "finetune.lr"),
        ("backbones.7.name=vgg16", "not an index"),
        ("backbones.x.name=vgg16", "not an index"),
        ("finetune.epochs=[1", "not valid YAML"),
        ("finetune=3", "finetune"),
        ("name=../../x", "name"),
    ],
)
def test_bad_set_values_are_typed_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "pipelines/smoke.yaml", [override])


@pytest.mark.parametrize("label", [0, 1])
def test_a_manifest_with_one_class_is_a_typed_error_before_any_work(tmp_path, label):
    from cad.data.manifest import ManifestRow
    from cad.errors import DataError
    from cad.pipeline.stages.data import check_both_classes

    rows = [ManifestRow(f"P{i}", f"P{i}/s", "dce", i, label) for i in range(4)]
    with pytest.raises(DataError, match="needs both labels"):
        check_both_classes(rows)
    check_both_classes([*rows, ManifestRow("P9", "P9/s", "dce", 0, 1 - label)])


def test_a_manifest_based_run_stores_no_raw_data_path(tmp_path):
    """The ingest identity (what its manifest.json and key hold) and the resolved config
    saved with a run carry a hash of data.root / data.manifest, never the paths."""
    from cad.config import redact_paths
    from cad.pipeline.graph import build_graph

    root = tmp_path / "Doe_Jane_19700101"
    root.mkdir()
    manifest = root / "m.csv"
    manifest.write_text("patient_id,path,series,slice_index,label\nP1,P1/s,dce,0,1\n")
    cfg = load_config(
        ROOT / "pipelines/smoke.yaml", [f"data.manifest={manifest}", f"data.root={root}"]
    )
    graph = build_graph(cfg, "fingerprint")
    ingest = next(n for n in graph.nodes if n.stage.name == "ingest")
    texts = [str(ingest.settings.identity()), dump_config(redact_paths(cfg))]
    for text in texts:
        assert "Doe_Jane" not in text and "19700101" not in text
    assert ingest.settings.root == root  # still there to run with
