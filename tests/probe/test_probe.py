import numpy as np
import pytest

from cad.artifacts.probe import LayerScore
from cad.config import BalanceConfig, ProbeConfig
from cad.errors import ConfigError
from cad.probe.nodes import choose_connection_node
from cad.probe.svm import choose_finetune_node, score_nodes


def _features(seed=0):
    """Three nodes: noise, weak signal, strong signal; 20 patients x 10 samples."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(20), 10)
    y = (rng.random(200) < 0.3).astype(int)
    noise = rng.normal(size=(200, 8))
    weak = noise.copy()
    weak[:, 0] += 0.8 * y
    strong = rng.normal(size=(200, 8))
    strong[:, 0] += 4 * y
    folds = patients % 3
    return {"a": noise, "b": weak, "c": strong}, y, folds


def test_node_choice_follows_probe_scores():
    features, y, folds = _features()
    scores = score_nodes(
        features,
        {"a": 1, "b": 2, "c": 3},
        y,
        folds,
        ProbeConfig(runtime={"n_jobs": 1}),
        BalanceConfig(method="over"),
    )
    by_node = {s.node: s for s in scores}
    assert by_node["c"].f1_mean > by_node["b"].f1_mean > by_node["a"].f1_mean
    assert choose_finetune_node(scores).node == "c"
    assert len(by_node["c"].fold_f1) == 3 and by_node["c"].dim == 8


def test_ties_go_to_the_shallower_node():
    scores = [
        LayerScore(node="deep", depth=5, dim=4, f1_mean=0.8, f1_std=0.0, fold_f1=[]),
        LayerScore(node="shallow", depth=2, dim=4, f1_mean=0.8, f1_std=0.1, fold_f1=[]),
        LayerScore(node="worse", depth=1, dim=4, f1_mean=0.7, f1_std=0.0, fold_f1=[]),
    ]
    assert choose_finetune_node(scores).node == "shallow"


def test_rbf_kernel_and_parallel_jobs():
    features, y, folds = _features()
    scores = score_nodes(
        features,
        {"a": 1, "b": 2, "c": 3},
        y,
        folds,
        ProbeConfig(kernel="rbf", runtime={"n_jobs": 2}),
        BalanceConfig(method="none"),
    )
    assert choose_finetune_node(scores).node == "c"


NODES = ["s", "l1", "l2", "l3", "l4", "big", "fc"]
SHAPES = {
    "big": (512, 2, 2),
    "fc": (4096,),
    "s": (64, 32, 32),
    "l1": (256, 16, 16),
    "l2": (512, 8, 8),
    "l3": (1024, 4, 4),
    "l4": (2048, 2, 2),
}


@pytest.mark.parametrize(
    "rule,finetune,expected",
    [
        ("next", "l1", "l2"),  # the next candidate node
        ("next", "s", "l1"),
        ("next", "big", "fc"),
        ("next", "fc", "fc"),  # nothing after the last node: the head attaches there
        ("same", "l2", "l2"),
        ("last", "l1", "fc"),
        ("l3", "l1", "l3"),
    ],
)
def test_connection_rules(rule, finetune, expected):
    assert choose_connection_node(NODES, SHAPES, finetune, rule) == expected


def test_unknown_connection_name():
    with pytest.raises(ConfigError, match="did you mean 'l3'"):
        choose_connection_node(NODES, SHAPES, "l1", "l33")


def test_solver_follows_the_shape():
    from cad.probe.svm import make_probe, solver_for

    assert solver_for(ProbeConfig(), 800) == "libsvm"
    assert solver_for(ProbeConfig(), 50_000) == "liblinear"
    assert solver_for(ProbeConfig(solver="liblinear"), 800) == "liblinear"
    assert solver_for(ProbeConfig(kernel="rbf", solver="liblinear"), 800) == "libsvm"
    steps = dict(make_probe(ProbeConfig(), BalanceConfig(method="over"), 800).steps)
    assert list(steps) == ["scale", "resample", "kernel", "svm"]
    liblinear = dict(make_probe(ProbeConfig(), BalanceConfig(method="over"), 50_000).steps)
    assert list(liblinear) == ["scale", "resample", "svm"]


def test_liblinear_path_agrees_on_the_best_node():
    features, y, folds = _features()
    scores = score_nodes(
        features,
        {"a": 1, "b": 2, "c": 3},
        y,
        folds,
        ProbeConfig(solver="liblinear", runtime={"n_jobs": 1}),
        BalanceConfig(method="over"),
    )
    assert choose_finetune_node(scores).node == "c"


def test_the_precomputed_linear_kernel_fits_the_same_svm_as_libsvms_own() -> None:
    """The probe's libsvm path feeds SVC a BLAS-computed linear kernel; the decision values
    equal those of SVC(kernel="linear") on the same scaled, resampled data."""
    from sklearn.svm import SVC

    from cad.probe.svm import make_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 300)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) + rng.normal(size=120) > 1.5).astype(int)
    probe = make_probe(ProbeConfig(C=0.01), BalanceConfig(method="over"), len(y)).fit(x, y)
    assert list(dict(probe.steps)) == ["scale", "resample", "kernel", "svm"]
    scaled, resampled = probe.named_steps["scale"], probe.named_steps["resample"]
    xs, ys = resampled.fit_resample(scaled.transform(x), y)
    reference = SVC(C=0.01, kernel="linear").fit(xs, ys)
    test = rng.normal(size=(40, 300)).astype(np.float32)
    np.testing.assert_allclose(
        probe.decision_function(test),
        reference.decision_function(scaled.transform(test)),
        rtol=1e-6,
        atol=1e-6,
    )
