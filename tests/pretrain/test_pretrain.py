"""cad's offline pretrained source at a tiny size: the weights fit the registry network,
a killed run resumes to the same weights, the cache is reused and verified, and no label
or held-out patient can reach the weights."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cad.backbones import create_backbone
from cad.config import PretrainConfig, load_config
from cad.pipeline.graph import PRETRAIN, build_graph, needs_pretrain
from cad.pretrain import cache_root, ensure_pretrained
from cad.pretrain.shapes import ShapeSource
from cad.pretrain.train import pretrain

TINY = PretrainConfig(steps=4, batch_size=4, size=32, runtime={"checkpoint_every": 2})


def test_shape_source_is_seeded_and_balanced_in_range():
    source = ShapeSource(3)
    a, la = source.batch(64, 40, torch.Generator().manual_seed(1))
    b, lb = source.batch(64, 40, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (64, 3, 40, 40) and source.classes == 80
    assert int(la.min()) >= 0 and int(la.max()) < source.classes
    assert -0.5 <= float(a.min()) and float(a.max()) <= 1.5
    # the object is what tells classes apart: two images of one class differ in pose
    other, _ = source.batch(64, 40, torch.Generator().manual_seed(2))
    assert not torch.equal(a, other)


@pytest.mark.parametrize("name", ["resnet18", "lenet5"])
def test_weights_load_strictly_into_the_registry_network(name, tmp_path):
    result = pretrain(name, 3, TINY.model_copy(update={"steps": 2}))
    reference = create_backbone(name, "random", 3).model.state_dict()
    assert set(result.state) == set(reference)
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(result.state, str(path))
    loaded = create_backbone(name, "pretrain", 3, pretrained=path, pretrained_label="pretrain:x")
    assert loaded.weights_source == "pretrain:x" and not loaded.fell_back
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in result.state.items())
    assert not torch.equal(state[next(iter(state))], reference[next(iter(state))])


def test_kill_and_resume_gives_the_same_weights(tmp_path):
    whole = pretrain("resnet18", 3, TINY, tmp_path / "a")

    def die_at_step_3(n: int, seen=[0]) -> None:  # noqa: B006  (counts calls across steps)
        seen[0] += n
        if seen[0] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain("resnet18", 3, TINY, tmp_path / "b", die_at_step_3)
    resumed = pretrain("resnet18", 3, TINY, tmp_path / "b")
    assert resumed.resumed_at == 2
    assert resumed.loss == whole.loss
    for key, value in whole.state.items():
        assert torch.equal(value, resumed.state[key]), key


def test_cache_is_reused_and_a_damaged_entry_is_recomputed():
    first = ensure_pretrained("resnet18", 3, TINY)
    assert first.directory.parent == cache_root() and not first.reused
    again = ensure_pretrained("resnet18", 3, TINY)
    assert again.reused and again.directory == first.directory
    assert again.record == first.record
    with open(first.weights, "r+b") as handle:  # damage the weights file in place
        handle.seek(4096)
        handle.write(b"\0" * 256)
    redone = ensure_pretrained("resnet18", 3, TINY)
    assert not redone.reused and redone.record.sha256 == first.record.sha256
    other = ensure_pretrained("resnet18", 3, TINY.model_copy(update={"seed": 1}))
    assert other.directory != first.directory
    assert not (cache_root() / f".{first.directory.name}.partial").exists()


def _pretrain_key(overrides: list[str]) -> str:

    cfg = load_config("pipelines/smoke.yaml", overrides)
    graph = build_graph(cfg, "fingerprint")
    (node,) = [n for n in graph if n.stage is PRETRAIN]
    return json.dumps(PRETRAIN.identity(node.settings), sort_keys=True)


def test_no_label_and_no_held_out_patient_reaches_the_weights():
    """The shapes pretrain stage reads no artifact, so its key, and with it the weights,
    cannot depend on the data: other labels (lesion patients), other patients' pixels,
    other splits give the same key; its own settings do change it."""
    graph = build_graph(load_config("pipelines/smoke.yaml", []), "fingerprint")
    assert [dict(n.inputs) for n in graph if n.stage is PRETRAIN] == [{}]
    base = _pretrain_key([])
    for changed in (
        ["data.phantom.lesion_fraction=0.3"],  # other labels
        ["data.phantom.seed=11"],  # other pixels, test patients included
        ["split.seed=5", "split.test=0.3"],  # other held-out patients
        ["data.margin=3", "finetune.epochs=2"],
    ):
        assert _pretrain_key(changed) == base, changed
    assert _pretrain_key(["pretrain.steps=5"]) != base
    assert _pretrain_key(["input.channels=single", "input.phases=[post1]"]) != base


def test_fallback_pretrain_adds_the_stage_only_when_weights_are_missing(tmp_path):
    from cad.config import BackboneConfig

    assert needs_pretrain(BackboneConfig(name="resnet18", weights="pretrain"))
    assert not needs_pretrain(BackboneConfig(name="resnet18", weights="random"))
    missing = BackboneConfig(name="resnet18", weights="imagenet", fallback="pretrain")
    assert needs_pretrain(missing)  # no ImageNet file in the test environment
    result = pretrain("resnet18", 3, TINY.model_copy(update={"steps": 1}))
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(result.state, str(path))
    loaded = create_backbone("resnet18", "imagenet", 3, "pretrain", path, "pretrain:y")
    assert loaded.fell_back and loaded.weights_source.startswith("pretrain:y (fallback: ")
    with pytest.raises(Exception, match="pretrain stage"):
        create_backbone("resnet18", "pretrain", 3)


def test_cli_pretrains_then_reuses(tmp_path):
    args = [sys.executable, "-m", "cad", "pretrain", "lenet5", "--set", "pretrain.steps=2"]
    args += ["--set", "pretrain.batch_size=4", "--set", "pretrain.size=32"]
    first = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "trained in" in first.stdout + first.stderr
    second = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "reused" in second.stdout + second.stderr
    (entry,) = cache_root().glob("lenet5-*")
    record = json.loads((entry / "pretrain.json").read_text())
    assert record["steps"] == 2 and record["classes"] == 80
    assert set(load_file(str(entry / "weights.safetensors"))) == set(
        create_backbone("lenet5", "random", 3).model.state_dict()
    )


def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path):
    """A real SIGKILL after the first checkpoint: the rerun resumes, and its weights equal
    those of a run that was never interrupted (in another cache)."""
    import os
    import signal
    import time

    args = [sys.executable, "-m", "cad", "pretrain", "resnet18"]
    for item in ("steps=8", "batch_size=4", "size=32", "runtime.checkpoint_every=2"):
        args += ["--set", f"pretrain.{item}"]
    killed_cache, whole_cache = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "CAD_CACHE": str(killed_cache)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = None
    while proc.poll() is None and checkpoint is None:
        checkpoint = next(killed_cache.glob("pretrained/.*.partial/checkpoints/last.*"), None)
        time.sleep(0.05)
    assert checkpoint is not None, "the run finished before its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed_cache.glob("pretrained/resnet18-*"))  # nothing published
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    assert "resuming at step" in rerun.stdout + rerun.stderr
    env["CAD_CACHE"] = str(whole_cache)
    subprocess.run(args, env=env, capture_output=True, check=True)
    (killed,) = killed_cache.glob("pretrained/resnet18-*/pretrain.json")
    (whole,) = whole_cache.glob("pretrained/resnet18-*/pretrain.json")
    assert json.loads(killed.read_text())["sha256"] == json.loads(whole.read_text())["sha256"]


def test_a_source_task_not_learned_is_said_so():
    from cad.artifacts.pretrained import PretrainRecord

    base = dict(backbone="vgg16", in_chans=3, method="shapes-1", key="k", steps=300)
    base |= dict(batch_size=64, size=48, classes=80, loss=[4.4], precision="cpu-bf16")
    base |= dict(seed=0, wall_s=1.0, sha256="0" * 64)
    flat = PretrainRecord(source_accuracy=0.012, **base)
    assert not flat.learned and "NOT LEARNED" in flat.label
    learned = PretrainRecord(source_accuracy=0.23, **base)
    assert learned.learned and "NOT LEARNED" not in learned.label


def test_networks_without_normalization_train_at_the_scaled_lr(monkeypatch):
    """VGG-style nets (no normalization layers) get ``lr * unnormalized_lr_scale``; at the
    full lr VGG16 stays at chance loss (README: pretraining)."""
    import cad.pretrain.train as train

    seen: list[float] = []
    real = torch.optim.AdamW

    def recording(params, lr, **kwargs):
        seen.append(lr)
        return real(params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    cfg = PretrainConfig(steps=1, batch_size=2, size=32, lr=1e-3, unnormalized_lr_scale=0.1)
    assert not train._normalized(create_backbone("lenet5", weights="random").model)
    assert train._normalized(create_backbone("resnet18", weights="random").model)
    pretrain("lenet5", 1, cfg)
    pretrain("resnet18", 1, cfg)
    assert seen == [pytest.approx(1e-4), pytest.approx(1e-3)]


CONTRASTIVE = PretrainConfig.model_validate(
    {
        **TINY.model_dump(),
        "method": "contrastive",
        "contrastive": {"steps": 4, "batch_size": 4, "size": 32},
    }
)


def _slices(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 40, 40, generator=torch.Generator().manual_seed(seed))


def test_contrastive_views_pair_up_and_the_loss_finds_pairs():
    from cad.pretrain.contrastive import SliceViews, nt_xent

    views = SliceViews(_slices(), CONTRASTIVE.contrastive)
    a = views.batch(4, 32, torch.Generator().manual_seed(1))
    b = views.batch(4, 32, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[:4], a[4:])  # two different views of the same slices
    assert views.candidates == 7
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    loss, found = nt_xent(torch.cat([z, z + 0.01]), 0.2)
    mismatched, none = nt_xent(torch.cat([z, z.roll(1, 0)]), 0.2)  # partner of i is i - 1
    assert found == 8 and none == 0 and float(loss) < 0.2 < float(mismatched)


def test_contrastive_weights_fit_the_network_and_resume_to_the_same_weights(tmp_path):
    slices = _slices()
    whole = pretrain("resnet18", 3, CONTRASTIVE, tmp_path / "a", slices=slices)
    reference = create_backbone("resnet18", "random", 3).model.state_dict()
    assert set(whole.state) == set(reference) and whole.classes == 7

    def die_at_step_3(n: int, seen=[0]) -> None:  # noqa: B006  (counts calls across steps)
        seen[0] += n
        if seen[0] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain("resnet18", 3, CONTRASTIVE, tmp_path / "b", die_at_step_3, slices=slices)
    resumed = pretrain("resnet18", 3, CONTRASTIVE, tmp_path / "b", slices=slices)
    assert resumed.resumed_at == 2 and resumed.loss == whole.loss
    for key, value in whole.state.items():
        assert torch.equal(value, resumed.state[key]), key


def test_shapes_then_contrastive_starts_from_the_shared_shapes_entry():
    both = CONTRASTIVE.model_copy(update={"method": "shapes+contrastive"})
    shapes_only = TINY.model_copy(update={"method": "shapes"})
    with pytest.raises(Exception, match="training patients' slices"):
        ensure_pretrained("resnet18", 3, both)
    cached = ensure_pretrained("resnet18", 3, both, _slices())
    record = cached.record
    assert record.method == "shapes-1+contrastive-1" and record.start is not None
    assert record.label.startswith("pretrain:shapes-1+contrastive-1 4+4 steps (source acc ")
    assert "views matched" in record.label
    first = ensure_pretrained("resnet18", 3, shapes_only)
    assert first.reused and first.record.key == record.start.key  # one shapes entry for both
    assert not torch.equal(
        load_file(str(first.weights))["conv1.weight"],
        load_file(str(cached.weights))["conv1.weight"],
    )
    assert ensure_pretrained("resnet18", 3, both, _slices()).reused
    assert not ensure_pretrained("resnet18", 3, both, _slices(seed=1)).reused  # other pixels


class _Images:
    """An ImageSet's two readers over arrays (labels and pixels edited freely)."""

    def __init__(self, images, samples):
        self._images, self._samples = images, samples

    def images(self):
        return self._images

    def samples(self):
        return self._samples


def test_contrastive_pretraining_sees_only_the_training_patients_pixels(tmp_path):
    """The stage reads the images and the split, and hands the loop the training patients'
    rows only: other labels or other validation/test pixels give the same slices and the
    same cache key, hence the same weights; a training pixel changes them."""
    from cad.api import RunDir
    from cad.pipeline.runner import Runner
    from cad.pipeline.stages.pretrain import training_slices
    from cad.pretrain.cache import slices_digest, weights_key

    cfg = load_config("pipelines/smoke.yaml", ["pretrain.method=contrastive"])
    graph = build_graph(cfg, "fingerprint")
    (node,) = [n for n in graph if n.stage is PRETRAIN]
    assert set(node.inputs) == {"images", "splits"}
    assert node.inputs["images"] is graph.data.images and node.inputs["splits"] is graph.data.split
    runner = Runner(RunDir(tmp_path), b"s" * 32)
    images, splits = runner.run_node(graph.data.images), runner.run_node(graph.data.split)
    assignment = splits.assignment()
    samples, pixels = images.samples(), np.array(images.images())
    train = [i for i, s in enumerate(samples) if s.patient in set(assignment.train)]
    held_out = [i for i, s in enumerate(samples) if s.patient not in set(assignment.train)]
    assert train and held_out
    base = training_slices(images, splits)
    assert torch.equal(base, torch.from_numpy(pixels[train]))

    def key(slices):
        return weights_key("resnet18", 3, cfg.pretrain, slices_digest(slices))

    relabelled = [dataclasses.replace(s, label=1 - s.label) for s in samples]
    assert torch.equal(training_slices(_Images(pixels, relabelled), splits), base)
    noisy = pixels.copy()
    noisy[held_out] = np.random.default_rng(0).random(noisy[held_out].shape)
    assert torch.equal(training_slices(_Images(noisy, samples), splits), base)
    changed = pixels.copy()
    changed[train[0], 0, 0, 0] += 1
    assert key(training_slices(_Images(changed, samples), splits)) != key(base)


def test_cli_pretrains_contrastively_inside_a_pipeline_workdir(tmp_path):
    args = [sys.executable, "-m", "cad", "pretrain", "--set", "pretrain.method=contrastive"]
    refused = subprocess.run(args, capture_output=True, text=True)
    assert refused.returncode == 2 and "--workdir" in refused.stdout + refused.stderr
    args += ["--pipeline", "pipelines/smoke.yaml", "--workdir", str(tmp_path)]
    for item in ("steps=2", "batch_size=4", "size=32"):
        args += ["--set", f"pretrain.contrastive.{item}"]
    first = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "trained in" in first.stdout + first.stderr
    assert list(tmp_path.glob("artifacts/split-*")) and list(tmp_path.glob("artifacts/pretrain-*"))
    second = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "reused" in second.stdout + second.stderr
    other = subprocess.run([*args, "vgg16"], capture_output=True, text=True)
    assert other.returncode == 2 and "does not pretrain it" in other.stdout + other.stderr
