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
    cfg = TrainConfig(labels="l", store="s", fusion="graph", fusion_kwargs={"hidden": 8})
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


def test_graph_fusion_ranks_its_wide_part_alone(tmp_path):
    """A tuned graph fusion with a wide part also ranks that wide part alone
    (``fusion_kwargs.deep: false``) on the same inner folds. A network that cannot learn
    (lr 0: its deep part's last layer stays at zero) is its wide part alone in every inner
    fold, so both rows score the same, and a tie goes to the wide part alone (the simpler
    model, listed first); ``deep: false`` itself trains no epoch and
    predicts the linear terms; ``tune.wide_alone: false`` drops the candidate."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    import warnings

    import wsimm
    from wsimm.errors import WsimmWarning

    co = wsimm.make_cohort(60, seed=4, weights=(0.0, 1.0, 1.0), feature_dim=8)
    p = co.save(tmp_path)
    common = dict(
        labels=str(p["labels"]), omics=str(p["omics"]), clinical=str(p["clinical"]),
        gene_groups=str(p["gene_groups"]), task="survival", fusion="graph",
        survival_loss="cox", folds=3, epochs=3, baselines="none", quiet=True, threads=1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        tuned = train(**common, tune={"folds": 2, "grid": {"lr": [0.0]}}, out=str(tmp_path / "t"))
        alone = train(**common, fusion_kwargs={"deep": False}, out=str(tmp_path / "w"))
        plain = train(
            **common, tune={"folds": 2, "grid": {"lr": [0.0]}, "wide_alone": False},
            out=str(tmp_path / "p"),
        )  # fmt: skip
    table = pd.read_csv(tuned.out / "tuning.csv")
    assert len(table) == 3 * 2
    for _, d in table.groupby("fold"):
        wide, net = d.iloc[0], d.iloc[1]
        assert net["lr"] == 0.0 and not wide["fusion_kwargs.deep"]
        np.testing.assert_allclose(
            wide[["inner_fold_0", "inner_fold_1"]].to_numpy(float),
            net[["inner_fold_0", "inner_fold_1"]].to_numpy(float),
        )
        assert bool(wide["chosen"]) and not bool(net["chosen"])
    assert "fusion_kwargs.deep" not in pd.read_csv(plain.out / "tuning.csv").columns

    m = alone.metrics
    assert m["wide_only"] == [0, 1, 2] and all(f["deep_part_kept"] == 0 for f in m["folds"])
    assert pd.read_csv(alone.out / "fold_0" / "history.csv")["epoch"].tolist() == [-1]
    pred = alone.predictions
    np.testing.assert_allclose(
        pred["risk"], pred["linear_clinical"] + pred["linear_omics"], atol=1e-4
    )
    np.testing.assert_allclose(pred["risk"], tuned.predictions["risk"], atol=1e-5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fusion": "late", "fusion_kwargs": {"deep": False}}, "need --fusion graph"),
        ({"fusion": "graph", "fusion_kwargs": {"deep": False, "wide": False}}, "has none"),
    ],
)
def test_deep_false_needs_a_wide_part(tmp_path, kw, match):
    pytest.importorskip("torch_geometric")
    import wsimm

    p = wsimm.make_cohort(30, seed=1, feature_dim=8).save(tmp_path)
    with pytest.raises(ConfigError, match=match):
        train(
            labels=str(p["labels"]), omics=str(p["omics"]), clinical=str(p["clinical"]),
            task="survival", folds=2, epochs=1, baselines="none", quiet=True,
            out=str(tmp_path / "r"), **kw,
        )  # fmt: skip
