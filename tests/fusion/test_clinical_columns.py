"""Clinical inputs never take ids, outcomes or split flags unless a user names them, types come
from the training patients, and a run records and prints what it used."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED
from wsimm.fusion import Modalities, Preprocessor, read_clinical, reserved_reason


def _porpoise_like(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "Unnamed: 0": np.arange(n),
            "case_id": [f"P{i:03d}" for i in range(n)],
            "slide_id": [f"P{i:03d}-DX1.svs" for i in range(n)],
            "age": rng.integers(30, 90, n),
            "site": rng.choice(["2F", "4Z", "BT"], n),
            "survival_months": rng.exponential(30, n).round(2),
            "censorship": rng.integers(0, 2, n).astype(float),
            "is_female": rng.integers(0, 2, n),
            "oncotree_code": rng.choice(["BLCA", "UCU"], n),
            "train": rng.integers(0, 2, n).astype(float),
            "os_time": rng.exponential(30, n),
            "fold": rng.integers(0, 5, n),
            "TP53_rnaseq": rng.standard_normal(n),
        }
    )
    df.to_csv(path, index=False)
    return df


def test_ids_outcomes_and_split_flags_are_left_out(tmp_path):
    _porpoise_like(tmp_path / "t.csv")
    clin, spec = read_clinical(
        tmp_path / "t.csv",
        patient_col="case_id",
        columns=None,
        exclude=["case_id", "slide_id", "survival_months", "censorship"],
    )
    assert list(clin.columns) == ["age", "site", "is_female", "oncotree_code"]
    assert spec.columns == ["age", "site", "is_female", "oncotree_code"]
    for col, why in {
        "train": "a split flag",
        "fold": "a split flag",
        "os_time": "an outcome",
        "Unnamed: 0": "a row index",
        "survival_months": "an id or outcome of this run",
    }.items():
        assert spec.excluded[col] == why
    assert "TP53_rnaseq" not in spec.excluded  # omics go to --omics, silently


def test_named_columns_are_used_as_given(tmp_path):
    _porpoise_like(tmp_path / "t.csv")
    _, spec = read_clinical(
        tmp_path / "t.csv", patient_col="case_id", columns=["age", "train"], exclude=["case_id"]
    )
    assert spec.columns == ["age", "train"] and spec.excluded == {}


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("train", True),
        ("is_train", True),
        ("val", True),
        ("split", True),
        ("censorship", True),
        ("vital_status", True),
        ("days_to_death", True),
        ("OS.time", True),
        ("PFI", True),
        ("DSS.time", True),
        ("pfs_months", True),
        ("patient_id", True),
        ("age", False),
        ("is_female", False),
        ("oncotree_code", False),
        ("stage", False),
        ("tumour_grade", False),
    ],
)
def test_reserved_names(name, reserved):
    assert (reserved_reason(name) is not None) == reserved, name


def test_types_are_inferred_on_training_patients(tmp_path):
    # 'score' has three values overall but only two among the training patients: in that
    # fold it is a 0/1 flag (categorical), whatever the test patients hold
    df = pd.DataFrame({"patient_id": [f"p{i}" for i in range(12)], "score": [0, 1] * 5 + [7, 9]})
    df.to_csv(tmp_path / "c.csv", index=False)
    clin, spec = read_clinical(
        tmp_path / "c.csv", patient_col="patient_id", columns=None, exclude=["patient_id"]
    )
    mods = Modalities(clinical=clin, clinical_spec=spec)
    train_ids = [f"p{i}" for i in range(10)]
    pre = Preprocessor.fit(mods, train_ids, min_count=1)
    assert pre.clin_cat == {"score": ["0", "1"]} and pre.clin_num == {}
    pre_all = Preprocessor.fit(mods, [f"p{i}" for i in range(12)], min_count=1)
    assert "score" in pre_all.clin_num


def test_tcga_table_as_clinical_uses_no_split_flag(tmp_path):
    """The whole PORPOISE table as --clinical, no --clinical-cols: the `train` flag (which goes
    with the outcome) is not a feature; the run records and prints the columns it used."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    from typer.testing import CliRunner

    from wsimm_cli.main import app

    table = SHARED / "tcga" / "tcga_blca_all_clean.csv.zip"
    if not table.is_file():
        pytest.skip(f"{table} not available (../shared/data is absent)")
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--labels", str(table),
            "--clinical", str(table),
            "--patient-col", "case_id",
            "--time-col", "survival_months",
            "--censorship-col", "censorship",
            "--task", "survival",
            "--fusion", "concat",
            "--baselines", "clinical_cox",
            "--folds", "2",
            "--epochs", "1",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    used = m["clinical"]["columns"]
    assert set(used) == {"age", "site", "is_female", "oncotree_code"}, used
    assert m["clinical"]["excluded"]["train"] == "a split flag"
    assert "clinical columns used: age (numeric)" in r.output
    assert "train (a split flag)" in r.output
    for k in range(2):
        pre = json.loads((out / f"fold_{k}" / "preprocess.json").read_text())
        assert "train" not in [*pre["clin_num"], *pre["clin_cat"]]
