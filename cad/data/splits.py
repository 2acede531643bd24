"""Patient-level train/validation/test splits and patient-grouped CV folds.

Patients never straddle splits: everything here works on patient keys, and a patient's
label for stratification is whether any of its samples is positive.

Patients are taken in the order they first appear in the sample table (which is manifest
order), never sorted by key: keys are keyed pseudonyms, so sorting by them would make the
split depend on the workdir's secret rather than on the data and the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cad.config import SplitConfig
from cad.errors import DataError

log = logging.getLogger("cad.data")


def patient_labels(patients: Sequence[str], labels: Sequence[int]) -> dict[str, int]:
    """Patient -> 1 if any of its samples is positive, in order of first appearance."""
    out: dict[str, int] = {}
    for patient, label in zip(patients, labels, strict=True):
        out[patient] = max(out.get(patient, 0), int(label))
    return out


def _split(keys: list[str], strata: list[int], share: float, seed: int) -> tuple[list, list]:
    """Split patient keys, stratified when every class has at least two patients."""
    counts = np.bincount(strata, minlength=2)
    stratify = strata if counts.min() >= 2 else None
    if stratify is None:
        log.warning("too few patients per class to stratify a split; splitting at random")
    rest, held = train_test_split(keys, test_size=share, random_state=seed, stratify=stratify)
    order = {key: i for i, key in enumerate(keys)}
    return sorted(rest, key=order.get), sorted(held, key=order.get)


def split_patients(
    patients: Sequence[str], labels: Sequence[int], cfg: SplitConfig
) -> dict[str, list[str]]:
    """Seeded, stratified split of patients into train / val / test key lists."""
    per_patient = patient_labels(patients, labels)
    keys = list(per_patient)  # first-appearance order, see the module docstring
    if len(keys) < 6:
        raise DataError(
            f"{len(keys)} patients are too few to split into train/val/test; need at least 6 "
            "(raise data.phantom.patients or add patients to the manifest)"
        )
    rest, test = _split(keys, [per_patient[k] for k in keys], cfg.test, cfg.seed)
    val_share = cfg.val / (1.0 - cfg.test)
    train, val = _split(rest, [per_patient[k] for k in rest], val_share, cfg.seed + 1)
    return {"train": train, "val": val, "test": test}


def assign_folds(
    patients: Sequence[str], labels: Sequence[int], n_folds: int, seed: int
) -> dict[str, int]:
    """Patient -> CV fold inside the training split (grouped by patient, stratified)."""
    patients = np.asarray(patients)
    # groups numbered by first appearance: sklearn orders groups by value, and the keys'
    # values depend on the secret
    first_seen = {key: i for i, key in enumerate(dict.fromkeys(patients.tolist()))}
    groups = np.array([first_seen[p] for p in patients.tolist()])
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for fold, (_, test_idx) in enumerate(cv.split(patients, np.asarray(labels), groups)):
        for patient in dict.fromkeys(patients[test_idx].tolist()):
            folds[str(patient)] = fold
    return folds


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """Raise if any patient key appears in two splits (a guard, not a hope)."""
    seen: dict[str, str] = {}
    for name, keys in splits.items():
        for key in keys:
            if key in seen:
                raise DataError(f"patient {key} is in both '{seen[key]}' and '{name}'")
            seen[key] = name
