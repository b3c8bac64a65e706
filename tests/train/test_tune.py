"""``wsimm train --tune``: the inner search sees no outer test patient, picks the best inner
score, records every candidate, and the fold trains with what it picked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from wsimm.errors import ConfigError
from wsimm.train import TrainConfig, train
from wsimm.train._tune import DEFAULT_GRID, TuneSpec, with_values
from wsimm_cli.main import app

TUNE = {"folds": 2, "grid": {"lr": [1e-5, 3e-3], "model_kwargs.dropout": [0.0]}}


def _run(store, labels, out, **kw):
    opts = dict(task="survival", folds=3, epochs=3, batch_size=4, tune=TUNE, quiet=True)
    opts.update(kw)
    return train(store=str(store), labels=str(labels), out=str(out), **opts)


@pytest.fixture(scope="module")
def tuned(small_survival, tmp_path_factory):
    _, store, labels = small_survival
    d = tmp_path_factory.mktemp("tune")
    a = _run(store, labels, d / "a")
    # the outer test patients of fold 0 get other outcomes: fold 0's search must not move
    splits = pd.read_csv(d / "a" / "splits.csv", dtype={"patient_id": str})
    test0 = set(splits.loc[(splits["fold"] == 0) & (splits["set"] == "test"), "patient_id"])
    lab = pd.read_csv(labels, dtype={"patient_id": str})
    sel = lab["patient_id"].isin(test0)
    rng = np.random.default_rng(3)
    new = {p: (round(rng.uniform(0.1, 100), 2), int(rng.integers(0, 2))) for p in sorted(test0)}
    lab.loc[sel, "time"] = lab.loc[sel, "patient_id"].map(lambda p: new[p][0])
    lab.loc[sel, "event"] = lab.loc[sel, "patient_id"].map(lambda p: new[p][1])
    lab.to_csv(d / "changed.csv", index=False)
    b = _run(store, d / "changed.csv", d / "b", splits=str(d / "a" / "splits.csv"))
    return a, b


def test_every_candidate_is_scored_and_the_best_chosen(tuned):
    a, _ = tuned
    out = a.out
    table = pd.read_csv(out / "tuning.csv")
    assert len(table) == 3 * 2  # 3 outer folds x 2 candidates
    for k, d in table.groupby("fold"):
        inner = d[["inner_fold_0", "inner_fold_1"]].to_numpy()
        np.testing.assert_allclose(d["inner_c_index"], np.nanmean(inner, 1))
        best = d.loc[d["inner_c_index"].idxmax()]
        assert bool(best["chosen"]) and d["chosen"].sum() == 1
        m = json.loads((out / "metrics.json").read_text())
        assert m["tuning"]["folds"][str(k)]["lr"] == best["lr"]
        # the fold trained with what it chose (config of the fold's model)
        row = next(r for r in m["folds"] if r["fold"] == k)
        assert row["tuned"]["lr"] == best["lr"]
        pd.testing.assert_frame_equal(
            pd.read_csv(out / f"fold_{k}" / "tuning.csv"), d.reset_index(drop=True)
        )


def test_the_search_sees_no_outer_test_patient(tuned):
    a, b = tuned
    ta, tb = (pd.read_csv(r.out / "fold_0" / "tuning.csv") for r in (a, b))
    pd.testing.assert_frame_equal(ta, tb, check_exact=True)
    assert a.metrics["tuning"]["folds"]["0"] == b.metrics["tuning"]["folds"]["0"]


def test_grid_values_reach_the_config():
    cfg = TrainConfig(labels="l", store="s", fusion_kwargs={"hidden": 8})
    c = with_values(cfg, {"lr": 0.1, "fusion_kwargs.dropout": 0.3})
    assert c.lr == 0.1 and c.fusion_kwargs == {"hidden": 8, "dropout": 0.3} and c.tune is None
    assert cfg.fusion_kwargs == {"hidden": 8}  # the run's own config is left alone
    assert len(TuneSpec.from_config({}).candidates()) == np.prod(
        [len(v) for v in DEFAULT_GRID.values()]
    )


@pytest.mark.parametrize(
    ("tune", "match"),
    [
        ({"grid": {"seed": [0, 1]}}, "defines the data or the folds"),
        ({"grid": {"nope": [1]}}, "not a training option"),
        ({"grid": {"lr": []}}, "non-empty list"),
        ({"grid": {"lr.x": [1]}}, "only fusion_kwargs.X and model_kwargs.X"),
        ({"folds": 1}, "tune.folds must be >= 2"),
        ({"what": 1}, "unknown keys"),
    ],
)
def test_bad_grids_fail_before_anything_is_written(small_grade, tmp_path, tune, match):
    _, store, labels = small_grade
    with pytest.raises(ConfigError, match=match):
        train(store=str(store), labels=str(labels), out=str(tmp_path / "r"), tune=tune)
    assert not (tmp_path / "r").exists()


def test_cli_tune_flag_and_config_block(small_grade, tmp_path):
    _, store, labels = small_grade
    (tmp_path / "run.yaml").write_text(
        "epochs: 2\nfolds: 2\ntune:\n  folds: 2\n  grid:\n    weight_decay: [0.0001, 0.1]\n"
    )
    r = CliRunner().invoke(
        app,
        [
            "train", "--store", str(store), "--labels", str(labels), "--task", "grade",
            "--config", str(tmp_path / "run.yaml"), "--tune", "--out", str(tmp_path / "cli"),
            "--quiet",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "cli" / "tuning.csv")
    assert sorted(table["weight_decay"].unique()) == [0.0001, 0.1]  # the block, not the default
    assert "inner_auc" in table.columns
