"""Cutting, freezing and the frozen-prefix cache, on small torchvision networks."""

import numpy as np
import pytest
import torch
import torchvision

from cad.config import AugmentConfig, FinetuneConfig
from cad.device import select_runtime
from cad.finetune.model import build_transfer_model, split_prefix
from cad.finetune.predict import predict_proba
from cad.finetune.train import train

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _model(name="resnet18", ft="layer2", conn="layer3", size=64):
    torch.manual_seed(0)
    backbone = getattr(torchvision.models, name)()
    return build_transfer_model(
        backbone, ft, conn, in_chans=3, size=size, hidden=16, dropout=0.5, **IMAGENET
    )


def _data(n=24, size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, size, size), dtype=np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    x[y == 1, :, 20:40, 20:40] += 1.0  # learnable signal
    return x, y


def test_everything_computing_the_finetune_node_is_frozen():
    model = _model()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "body.conv1.weight" in frozen and "body.layer2.1.conv2.weight" in frozen
    assert not any(n.startswith(("body.layer3", "head.")) for n in frozen)
    assert all(not n.startswith("body.layer4") for n, _ in model.named_parameters())  # cut away


def test_frozen_bits_unchanged_trainable_changed_bn_stats_fixed():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, precision="fp32", hidden=16, patience=5)
    train(
        model,
        x,
        y,
        np.arange(len(y)),
        x[:8],
        y[:8],
        cfg,
        AugmentConfig(mode="none"),
        select_runtime("fp32", channels_last=False),
    )
    after = model.state_dict()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    # BatchNorm running statistics of frozen modules are untouched (eval mode)
    assert torch.equal(
        before["body.layer1.0.bn1.running_mean"], after["body.layer1.0.bn1.running_mean"]
    )
    assert not torch.equal(
        before["body.layer3.0.bn1.running_mean"], after["body.layer3.0.bn1.running_mean"]
    )
    assert not torch.equal(
        before["body.layer3.0.conv1.weight"], after["body.layer3.0.conv1.weight"]
    )
    assert not torch.equal(before["head.fc2.weight"], after["head.fc2.weight"])


@pytest.mark.parametrize(
    "name,ft,conn",
    [
        ("resnet18", "layer2", "layer3"),
        ("vgg11", "features.10", "classifier.1"),
        ("densenet121", "features.transition1", "features.transition2"),
    ],
)
def test_prefix_split_computes_the_same(name, ft, conn):
    model = _model(name, ft, conn).eval()
    prefix, suffix = split_prefix(model.body)
    x = torch.from_numpy(_data(4)[0])
    with torch.no_grad():
        assert torch.allclose(model(x), model.head(suffix(prefix(model.normalize(x)))), atol=1e-5)


def test_cached_prefix_gives_the_same_losses_as_full_forwards():
    x, y = _data()
    runtime = select_runtime("fp32", channels_last=False)
    histories = []
    for cache in (True, False):
        model = _model()
        cfg = FinetuneConfig(
            epochs=2,
            batch_size=8,
            lr=1e-2,
            precision="fp32",
            hidden=16,
            runtime={"cache_prefix": cache},
            patience=5,
        )
        result = train(
            model,
            x,
            y,
            np.arange(len(y)),
            x[:8],
            y[:8],
            cfg,
            AugmentConfig(mode="offline", copies=0),
            runtime,
        )
        assert result.used_prefix_cache is cache
        histories.append(result.history)
    for a, b in zip(*histories, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    x, y = _data()
    runtime = select_runtime("fp32", channels_last=False)
    aug = AugmentConfig(mode="none")
    cfg = FinetuneConfig(epochs=3, batch_size=8, lr=1e-2, precision="fp32", hidden=16, patience=5)
    full = _model()
    train(full, x, y, np.arange(len(y)), x[:8], y[:8], cfg, aug, runtime, tmp_path / "a")
    # "interrupted" after 2 epochs, then resumed with the 3-epoch config
    part = _model()
    train(
        part,
        x,
        y,
        np.arange(len(y)),
        x[:8],
        y[:8],
        cfg.model_copy(update={"epochs": 2}),
        aug,
        runtime,
        tmp_path / "b",
    )
    resumed = _model()
    result = train(
        resumed, x, y, np.arange(len(y)), x[:8], y[:8], cfg, aug, runtime, tmp_path / "b"
    )
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    np.testing.assert_allclose(
        predict_proba(full, x, runtime), predict_proba(resumed, x, runtime), rtol=1e-5, atol=1e-6
    )


def test_bf16_autocast_path_trains():
    x, y = _data()
    runtime = select_runtime("bf16", channels_last=True)
    model = _model()
    cfg = FinetuneConfig(epochs=1, batch_size=8, precision="bf16", hidden=16)
    result = train(
        model, x, y, np.arange(len(y)), x[:8], y[:8], cfg, AugmentConfig(mode="none"), runtime
    )
    assert np.isfinite(result.history[0]["train_loss"])
    assert result.val_prob.shape == (8,)


def test_same_node_trains_only_the_head():
    model = _model(ft="layer2", conn="layer2")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    prefix, suffix = split_prefix(model.body)
    x = torch.from_numpy(_data(2)[0])
    with torch.no_grad():
        model.eval()
        assert torch.allclose(model(x), model.head(suffix(prefix(model.normalize(x)))), atol=1e-5)


def test_googlenet_deep_supervision_trains_aux_heads_and_drops_them_at_inference():
    from cad.backbones import create_backbone, get_spec
    from cad.pipeline.stages.training import supervised_aux_nodes

    spec = get_spec("googlenet")
    aux = supervised_aux_nodes(spec, "inception3b.cat", "inception4e.cat")
    assert aux == ("inception4a.cat", "inception4d.cat")
    assert supervised_aux_nodes(spec, "inception4d.cat", "inception5a.cat") == ()
    torch.manual_seed(0)
    backbone = create_backbone("googlenet", "random", 3).model
    model = build_transfer_model(
        backbone,
        "inception3b.cat",
        "inception4e.cat",
        in_chans=3,
        size=64,
        hidden=16,
        dropout=0.5,
        aux_nodes=aux,
        **IMAGENET,
    )
    x, y = _data(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FinetuneConfig(epochs=1, batch_size=8, precision="fp32", hidden=16)
    result = train(
        model,
        x,
        y,
        np.arange(len(y)),
        x[:4],
        y[:4],
        cfg,
        AugmentConfig(mode="none"),
        select_runtime("fp32", channels_last=False),
    )
    assert not result.used_prefix_cache
    after = model.state_dict()
    assert not torch.equal(before["aux_heads.aux0.fc2.weight"], after["aux_heads.aux0.fc2.weight"])
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x[:2]))
        outputs = model.forward_supervised(torch.from_numpy(x[:2]))
    assert logits.shape == (2, 2) and len(outputs) == 3
    assert torch.equal(logits, outputs[0])


def test_a_checkpoint_of_another_architecture_is_ignored(tmp_path):
    x, y = _data(16)
    runtime = select_runtime("fp32", channels_last=False)
    cfg = FinetuneConfig(epochs=1, batch_size=8, precision="fp32", hidden=16)
    aug = AugmentConfig(mode="none")
    train(_model(conn="layer3"), x, y, np.arange(16), x[:4], y[:4], cfg, aug, runtime, tmp_path)
    result = train(
        _model(conn="layer4"), x, y, np.arange(16), x[:4], y[:4], cfg, aug, runtime, tmp_path
    )
    assert [h["epoch"] for h in result.history] == [1]


def test_predictor_is_the_eval_forward_with_batchnorm_folded_and_leaves_the_model_alone():
    from cad.finetune.predict import Predictor

    model = _model().eval()
    for module in model.modules():  # non-trivial BN statistics, so folding has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = _data(n=10)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    exact = Predictor(model, select_runtime("fp32", channels_last=False), batch_size=4)
    fast = Predictor(model, select_runtime("bf16"), batch_size=4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in exact.module.modules())
    assert {p.dtype for p in fast.module.parameters()} == {torch.bfloat16}
    np.testing.assert_allclose(exact(x), expected, atol=1e-5)
    np.testing.assert_allclose(fast(x), expected, atol=0.03)
    assert exact(x[:0]).shape == (0,)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_killed_mid_epoch_resumes_exactly_with_online_augmentation(tmp_path):
    """Interrupted inside epoch 3 of 4 (a checkpoint exists after epoch 2); the rerun with
    the same config trains epochs 3-4 exactly as the uninterrupted run did: same losses
    per epoch, same weights (online augmentation and dropout reseeded per epoch)."""
    x, y = _data()
    runtime = select_runtime("fp32", channels_last=False)
    aug = AugmentConfig(mode="online", flip=0.5, rotate_deg=10, noise=0.5)
    cfg = FinetuneConfig(
        epochs=4,
        batch_size=8,
        lr=1e-2,
        precision="fp32",
        hidden=16,
        patience=10,
        runtime={"cache_prefix": False},
    )
    order = np.arange(len(y))
    full = _model()
    whole = train(full, x, y, order, x[:8], y[:8], cfg, aug, runtime, tmp_path / "a")

    seen = [0]

    def die_in_epoch_3(n: int) -> None:
        seen[0] += n
        if seen[0] > 2 * len(y) + 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            _model(), x, y, order, x[:8], y[:8], cfg, aug, runtime, tmp_path / "b", die_in_epoch_3
        )
    resumed = _model()
    result = train(resumed, x, y, order, x[:8], y[:8], cfg, aug, runtime, tmp_path / "b")
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for a, b in zip(whole.history, result.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6), a["epoch"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6), a["epoch"]
    np.testing.assert_allclose(
        predict_proba(full, x, runtime), predict_proba(resumed, x, runtime), rtol=1e-5, atol=1e-6
    )


def test_the_compiled_training_step_is_wired_in_only_where_asked(monkeypatch):
    """``finetune.runtime.compile_step`` compiles the cached-prefix step (suffix + head)
    with eager's random numbers (dropout masks); off by default, and never without the
    cache. torch.compile itself is replaced here: what is checked is cad's wiring."""
    compiled = []

    def record(module, **kwargs):
        compiled.append((type(module).__name__, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", record)
    x, y = _data(n=8, size=32)
    runtime = select_runtime("fp32", channels_last=False)
    for cache, step in ((True, False), (True, True), (False, True)):
        cfg = FinetuneConfig(
            epochs=1,
            batch_size=8,
            precision="fp32",
            hidden=16,
            runtime={"cache_prefix": cache, "compile_step": step},
        )
        train(_model(size=32), x, y, np.arange(8), x, y, cfg, AugmentConfig(mode="none"), runtime)
    assert FinetuneConfig().runtime.compile_step is False
    assert compiled == [("_CachedStep", {"dynamic": None, "options": {"fallback_random": True}})]
