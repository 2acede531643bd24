import numpy as np
import pytest

from cad.config import AugmentConfig, BalanceConfig, SplitConfig
from cad.data.augment import augment_offline
from cad.data.balance import resample_indices
from cad.data.splits import assign_folds, check_disjoint, split_patients
from cad.errors import DataError


def _samples(n_patients=30, per=10):
    patients, labels = [], []
    for p in range(n_patients):
        positive = p % 3 == 0
        for s in range(per):
            patients.append(f"pat-{p:03d}")
            labels.append(int(positive and s < 3))
    return np.array(patients), np.array(labels)


def test_split_is_by_patient_and_stratified():
    patients, labels = _samples()
    splits = split_patients(patients, labels, SplitConfig(test=0.2, val=0.2, seed=1))
    check_disjoint(splits)
    assert sorted(sum(splits.values(), [])) == sorted(set(patients))
    for keys in splits.values():
        assert any(labels[np.isin(patients, keys)])  # each split has positive patients
    again = split_patients(patients, labels, SplitConfig(test=0.2, val=0.2, seed=1))
    assert again == splits


def test_patient_with_several_studies_stays_in_one_split():
    patients, labels = _samples()
    # the same patient key twice in the table (two studies) is still one patient
    patients = np.concatenate([patients, patients[:10]])
    labels = np.concatenate([labels, labels[:10]])
    splits = split_patients(patients, labels, SplitConfig())
    check_disjoint(splits)
    homes = [name for name, keys in splits.items() if "pat-000" in keys]
    assert len(homes) == 1


def test_check_disjoint_raises():
    with pytest.raises(DataError, match="pat-1"):
        check_disjoint({"train": ["pat-1"], "test": ["pat-1"]})


def test_too_few_patients():
    with pytest.raises(DataError, match="too few"):
        split_patients(["a", "b"], [0, 1], SplitConfig())


def test_folds_group_patients():
    patients, labels = _samples()
    folds = assign_folds(patients, labels, 3, 0)
    assert set(folds.values()) == {0, 1, 2} and set(folds) == set(patients)


@pytest.mark.parametrize("method", ["over", "under", "combined"])
def test_resampling_balances(method):
    labels = np.array([0] * 80 + [1] * 20)
    order = resample_indices(labels, BalanceConfig(method=method, ratio=1.0))
    counts = np.bincount(labels[order])
    assert counts[0] == counts[1]
    if method == "over":
        assert set(order) == set(range(100))
    if method == "under":
        assert len(order) == 40


def test_no_resampling():
    labels = np.array([0] * 8 + [1] * 2)
    assert list(resample_indices(labels, BalanceConfig(method="none"))) == list(range(10))


def test_offline_augmentation_is_deterministic_and_keeps_originals():
    images = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    cfg = AugmentConfig(copies=2, elastic=0.5, gibbs=0.5)
    a, source = augment_offline(images, cfg)
    b, _ = augment_offline(images, cfg)
    assert a.shape == (15, 3, 32, 32) and list(source) == [0, 1, 2, 3, 4] * 3
    np.testing.assert_array_equal(a[:5], images)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[5:10], images)
    c, _ = augment_offline(images, cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(a[5:], c[5:])


def test_split_and_folds_do_not_depend_on_the_pseudonym_secret():
    """Two workdirs (two secrets) give the same patients the same split and fold."""
    from cad.phi import Pseudonymizer

    patients, labels = _samples()
    results = []
    for secret in (b"a" * 32, b"b" * 32):
        pseudo = Pseudonymizer(secret)
        keys = np.array([pseudo.patient(p) for p in patients])
        back = {pseudo.patient(p): p for p in set(patients)}
        splits = split_patients(keys, labels, SplitConfig(seed=3))
        train = np.isin(keys, splits["train"])
        folds = assign_folds(keys[train], labels[train], 3, 3)
        results.append(
            (
                {name: sorted(back[k] for k in ks) for name, ks in splits.items()},
                {back[k]: f for k, f in folds.items()},
            )
        )
    assert sorted(back.values()) != sorted(back)  # keys really differ from the raw IDs
    assert results[0] == results[1]


def test_each_training_sample_gets_its_patients_fold_and_no_other_patient_gets_one():
    from cad.artifacts.splits import SplitAssignment, SplitSize
    from cad.data.samples import Sample

    size = SplitSize(patients=1, samples=1, positives=0)
    assignment = SplitAssignment(
        train=["a", "b"],
        val=["v"],
        test=[],
        folds={"a": 1, "b": 0},
        sizes={"train": size, "val": size, "test": size},
    )

    def sample(patient: str, i: int) -> Sample:
        return Sample(f"s{i}", patient, "study", "series", i, 0)

    folds = assignment.sample_folds([sample("b", 0), sample("a", 1), sample("a", 2)])
    assert folds.tolist() == [0, 1, 1]
    with pytest.raises(KeyError):  # a validation patient has no fold: never silently one
        assignment.sample_folds([sample("a", 0), sample("v", 1)])
