"""Patient-level cross-validation splits with an inner validation set, and their guards.

A split table has one row per (fold, patient): ``fold``, ``patient_id``, ``set`` in
{train, val, test}. Every patient is in exactly one test fold; within a fold the three sets are
disjoint. The same table is written to ``splits.csv`` and accepted back with ``--splits``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsimm.errors import DataError

SETS = ("train", "val", "test")


def _stratified_folds(strata: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per item: each stratum shuffled and dealt round-robin, starting where the
    previous stratum stopped so fold sizes stay balanced."""
    fold = np.empty(len(strata), int)
    start = 0
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        fold[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return fold


def make_splits(
    patient_ids: list[str],
    strata: np.ndarray,
    *,
    folds: int,
    val_fraction: float,
    seed: int,
) -> pd.DataFrame:
    """k-fold patient-level splits stratified by ``strata`` (label or event), each training
    fold with a stratified inner validation set of about ``val_fraction``; the same for any
    order of ``patient_ids``."""
    n = len(patient_ids)
    if folds > n:
        raise DataError(f"{folds} folds need at least {folds} patients, have {n}")
    rng = np.random.default_rng(seed)
    # dealt in patient-id order: the same patients get the same folds whatever the row order
    # of the tables they came from
    order = np.argsort(np.asarray(patient_ids, dtype=str), kind="stable")
    strata = np.asarray(strata)[order]
    test_fold = _stratified_folds(strata, folds, rng)
    rows = []
    ids = np.asarray(patient_ids, dtype=object)[order]
    for k in range(folds):
        tr = np.flatnonzero(test_fold != k)
        n_val_folds = max(2, round(1 / val_fraction))
        inner = _stratified_folds(strata[tr], n_val_folds, rng)
        is_val = np.zeros(n, bool)
        is_val[tr[inner == 0]] = True
        for i in np.flatnonzero(test_fold == k):
            rows.append((k, ids[i], "test"))
        for i in tr:
            rows.append((k, ids[i], "val" if is_val[i] else "train"))
    return pd.DataFrame(rows, columns=["fold", "patient_id", "set"])


def load_splits(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``splits.csv`` (ours, or a run directory holding one), or a folder of CLAM-style
    ``splits_<k>.csv`` files with ``train``/``val``/``test`` columns. Files with only ``train``
    and ``val`` columns (the published TCGA survival folds) hold out ``val``: it becomes the
    test set, and :func:`add_validation` carves the inner validation set from ``train``."""
    p = Path(path)
    if p.is_dir():
        if (p / "splits.csv").is_file():
            p = p / "splits.csv"
        else:
            files = sorted(p.glob("splits_*.csv"), key=lambda f: int(f.stem.split("_")[-1]))
            if not files:
                raise DataError(f"{path}: no splits.csv or splits_<k>.csv files in this folder")
            rows = []
            for f in files:
                k = int(f.stem.split("_")[-1])
                d = pd.read_csv(f, dtype=str)
                names = {s: s for s in SETS}
                if "test" not in d.columns and {"train", "val"} <= set(d.columns):
                    names = {"train": "train", "val": "test"}  # val is the held-out fold
                for col, s in names.items():
                    if col not in d.columns:
                        raise DataError(f"{f}: needs columns train, val, test (or train, val)")
                    rows += [(k, v.strip(), s) for v in d[col].dropna()]
            return pd.DataFrame(rows, columns=["fold", "patient_id", "set"])
    if not p.is_file():
        raise DataError(f"{path}: splits file not found")
    d = pd.read_csv(p, dtype={"patient_id": str})
    missing = {"fold", "patient_id", "set"} - set(d.columns)
    if missing:
        raise DataError(f"{p}: needs columns fold, patient_id, set (missing {sorted(missing)})")
    return d[["fold", "patient_id", "set"]]


def check_splits(splits: pd.DataFrame, patients: list[str], *, source: str = "splits") -> None:
    """Refuse leaky or incomplete splits: a patient tested in two folds, a patient in two
    sets of one fold, a fold without training, validation or test patients, an unknown set
    name. Patients of the cohort that no fold tests are an error too (every patient is
    scored)."""
    bad_sets = set(splits["set"]) - set(SETS)
    if bad_sets:
        raise DataError(f"{source}: unknown set name(s) {sorted(bad_sets)}; use train, val, test")
    dup = splits.duplicated(["fold", "patient_id"], keep=False)
    if dup.any():
        ex = splits.loc[dup, ["fold", "patient_id"]].drop_duplicates().head(5).values.tolist()
        raise DataError(f"{source}: patient(s) in two sets of one fold: {ex}")
    tests = splits[splits["set"] == "test"]
    twice = tests["patient_id"].value_counts()
    twice = twice[twice > 1]
    if len(twice):
        raise DataError(
            f"{source}: patient(s) {', '.join(twice.index[:8])} are in the test set of more "
            "than one fold; a patient is tested once"
        )
    for k, d in splits.groupby("fold"):
        have = set(d["set"])
        for s in SETS:
            if s not in have:
                raise DataError(f"{source}: fold {k} has no {s} patients")
    known = set(patients)
    untested = sorted(known - set(tests["patient_id"]))
    if untested:
        raise DataError(
            f"{source}: {len(untested)} patient(s) are in no test fold "
            f"({', '.join(untested[:8])}); every patient must be scored once"
        )


def add_validation(
    splits: pd.DataFrame, strata: dict[str, object], *, val_fraction: float, seed: int
) -> pd.DataFrame:
    """Give every fold without validation patients a stratified inner validation set of about
    ``val_fraction`` of its training patients (test patients are never touched)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _k, d in splits.groupby("fold", sort=True):
        d = d.sort_values("patient_id", kind="stable")  # not the file's row order
        if not (d["set"] == "val").any():
            tr = np.flatnonzero((d["set"] == "train").to_numpy())
            st = np.asarray([strata.get(p, 0) for p in d["patient_id"].iloc[tr]])
            inner = _stratified_folds(st, max(2, round(1 / val_fraction)), rng)
            col = d.columns.get_loc("set")
            d.iloc[tr[inner == 0], col] = "val"
        parts.append(d)
    return pd.concat(parts, ignore_index=True) if parts else splits
