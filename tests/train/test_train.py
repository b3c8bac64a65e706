"""wsimm train plumbing: the run directory, no leakage, guards on bad tables and splits,
predict, configs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from safetensors.numpy import load_file

from wsimm.errors import ConfigError, DataError, WsimmWarning
from wsimm.testing import bags_to_store, make_mil_cohort
from wsimm.train import TrainConfig, make_splits, predict, train
from wsimm.train._run import _check_scored
from wsimm.train._tables import load_examples

FAST = {"epochs": 3, "folds": 3, "quiet": True, "batch_size": 4}


def _run(store, labels, out, **kw):
    opts = {**FAST, **kw}
    return train(store=str(store), labels=str(labels), out=str(out), **opts)


def test_run_directory_matches_the_contract(small_grade, tmp_path):
    c, store, labels = small_grade
    res = _run(store, labels, tmp_path / "run", task="grade")
    run = tmp_path / "run"
    for f in ("config.yaml", "splits.csv", "metrics.json", "predictions.csv"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "grade" and len(m["folds"]) == 3
    for key in ("auc", "balanced_accuracy", "kappa"):
        assert key in m["mean"] and key in m["std"] and key in m["folds"][0]
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["patient_id"]) == sorted(c.patients["patient_id"])  # each once
    assert np.allclose(pred[["prob_0", "prob_1"]].sum(1), 1, atol=1e-5)
    for k in range(3):
        assert (run / f"fold_{k}" / "model.safetensors").is_file()
    # each reported metric is the reference library's on that fold's written predictions
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

    for r in m["folds"]:
        p = pred[pred["fold"] == r["fold"]]
        assert r["auc"] == pytest.approx(roc_auc_score(p["label"], p["prob_1"]), abs=1e-9)
        bacc = balanced_accuracy_score(p["label"], p["pred"])
        assert r["balanced_accuracy"] == pytest.approx(bacc, abs=1e-12)
        kappa = cohen_kappa_score(p["label"], p["pred"], weights="quadratic", labels=[0, 1])
        assert r["kappa"] == pytest.approx(kappa, abs=1e-12)
    for key in ("auc", "balanced_accuracy", "kappa"):
        vals = [r[key] for r in m["folds"]]
        assert m["mean"][key] == pytest.approx(np.mean(vals), abs=1e-12)
        assert m["std"][key] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    cfg = TrainConfig.load(run / "config.yaml")
    assert cfg.encoder == "synthetic" and cfg.task == "grade"
    assert res.metrics == {**m, **{}}
    with pytest.raises(ConfigError, match="already holds a finished run"):
        _run(store, labels, run, task="grade")


def test_splits_are_patient_level_stratified_with_inner_validation():
    ids = [f"P{i}" for i in range(50)]
    y = np.array([0] * 30 + [1] * 20)
    s = make_splits(ids, y, folds=5, val_fraction=0.2, seed=0)
    tests = s[s["set"] == "test"]
    assert sorted(tests["patient_id"]) == sorted(ids)
    for _, d in s.groupby("fold"):
        assert set(d["set"]) == {"train", "val", "test"}
        assert len(d) == 50 and not d["patient_id"].duplicated().any()
        pos = tests.loc[tests.index.isin(d.index), "patient_id"].map(dict(zip(ids, y, strict=True)))
        assert pos.sum() == 4  # 20 positives / 5 folds


def test_nothing_is_fitted_on_test_patients(small_survival, tmp_path):
    """Changing the test fold's outcomes changes neither the time bins, the normalisation,
    the chosen epoch nor the trained weights of that fold; the epoch is the validation
    loss minimum."""
    c, store, labels = small_survival
    base = _run(store, labels, tmp_path / "a", task="survival", epochs=4)
    splits = pd.read_csv(tmp_path / "a" / "splits.csv", dtype={"patient_id": str})
    test0 = set(splits.loc[(splits["fold"] == 0) & (splits["set"] == "test"), "patient_id"])
    lab = pd.read_csv(labels)
    rng = np.random.default_rng(1)
    new = {p: round(float(rng.uniform(0.1, 500)), 2) for p in sorted(test0)}
    sel = lab["patient_id"].isin(test0)
    lab.loc[sel, "time"] = lab.loc[sel, "patient_id"].map(new)
    lab.to_csv(tmp_path / "changed.csv", index=False)
    other = _run(
        store,
        tmp_path / "changed.csv",
        tmp_path / "b",
        task="survival",
        epochs=4,
        splits=str(tmp_path / "a" / "splits.csv"),
    )
    assert base.metrics["folds"][0]["best_epoch"] == other.metrics["folds"][0]["best_epoch"]
    ma = json.loads((tmp_path / "a" / "fold_0" / "meta.json").read_text())
    mb = json.loads((tmp_path / "b" / "fold_0" / "meta.json").read_text())
    assert ma["bins"] == mb["bins"]
    wa = load_file(str(tmp_path / "a" / "fold_0" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "fold_0" / "model.safetensors"))
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # the normalisation is the training patients' tile statistics, nothing else
    train0 = splits.loc[(splits["fold"] == 0) & (splits["set"] == "train"), "patient_id"]
    tiles = np.concatenate(
        [c.bags[s] for s in c.labels.loc[c.labels["patient_id"].isin(train0), "slide_id"]]
    ).astype(np.float64)
    np.testing.assert_allclose(wa["norm.mean"], tiles.mean(0), rtol=1e-4, atol=1e-5)
    # the bins are quantiles of the training patients' event times
    tr = c.patients[c.patients["patient_id"].isin(train0) & (c.patients["event"] == 1)]
    assert ma["bins"]["edges"][1] == pytest.approx(np.quantile(tr["time"], 0.25))
    # the chosen epoch is the validation-loss minimum
    hist = pd.read_csv(tmp_path / "a" / "fold_0" / "history.csv")
    assert ma["best_epoch"] == int(hist["val_loss"].idxmin())
    assert not any(col.startswith("test") for col in hist.columns)


def test_survival_run_writes_km_plot_and_survival_metrics(small_survival, tmp_path):
    """Each fold's c_index, c_index_uno and td_auc are scikit-survival's on the written test
    predictions, with IPCW from that fold's training patients; the risk groups cut at the
    training median."""
    sksurv = pytest.importorskip("sksurv.metrics")
    from sksurv.util import Surv

    from wsimm.survival import eval_times

    _, store, labels = small_survival
    res = _run(store, labels, tmp_path / "r", task="survival", survival_loss="cox")
    assert (tmp_path / "r" / "km.png").is_file()
    pred = pd.read_csv(tmp_path / "r" / "predictions.csv", dtype={"patient_id": str})
    splits = pd.read_csv(tmp_path / "r" / "splits.csv", dtype={"patient_id": str})
    lab = pd.read_csv(labels, dtype={"patient_id": str}).drop_duplicates("patient_id")
    lab = lab.set_index("patient_id")
    checked = 0
    for r in res.metrics["folds"]:
        p = pred[pred["fold"] == r["fold"]]
        tr = splits[(splits["fold"] == r["fold"]) & (splits["set"] == "train")]["patient_id"]
        tt, te = lab.loc[tr, "time"].to_numpy(float), lab.loc[tr, "event"].to_numpy(bool)
        t, e, risk = p["time"].to_numpy(float), p["event"].to_numpy(bool), p["risk"].to_numpy()
        assert r["c_index"] == pytest.approx(
            sksurv.concordance_index_censored(e, t, risk)[0], abs=1e-9
        )
        y_tr, y_te = Surv.from_arrays(te, tt), Surv.from_arrays(e, t)
        if t.max() <= tt.max():  # scikit-survival needs G defined at every test time
            uno = sksurv.concordance_index_ipcw(y_tr, y_te, risk, tau=tt.max())[0]
            assert r["c_index_uno"] == pytest.approx(uno, abs=1e-9)
            times = eval_times(tt, te, t)
            _, mean_auc = sksurv.cumulative_dynamic_auc(y_tr, y_te, risk, times)
            assert r["td_auc"] == pytest.approx(mean_auc, abs=1e-9)
            checked += 1
        assert 0 < r["ibs"] < 0.5
    assert checked >= 2, "the IPCW metrics were compared on too few folds"
    assert set(res.predictions["risk_group"]) <= {"low", "high"}


@pytest.mark.parametrize("model", ["clam_sb", "clam_mb", "transmil", "max", "abmil_gated"])
def test_every_model_trains_end_to_end(small_grade, tmp_path, model):
    _, store, labels = small_grade
    res = _run(store, labels, tmp_path / model, task="grade", model=model, epochs=2)
    assert not res.failed and len(res.predictions) == 24


def test_per_slide_pooling_and_censorship_convention(small_survival, tmp_path):
    c, store, labels = small_survival
    lab = pd.read_csv(labels)
    lab["censored"] = 1 - lab["event"]
    lab = lab.drop(columns="event")
    lab.to_csv(tmp_path / "cens.csv", index=False)
    res = _run(
        store,
        tmp_path / "cens.csv",
        tmp_path / "r",
        task="survival",
        censorship_col="censored",
        multi_slide="slides",
    )
    pred = res.predictions.set_index("patient_id")
    truth = c.patients.set_index("patient_id")
    assert (pred["event"] == truth.loc[pred.index, "event"]).all()


def test_predict_applies_every_fold_to_a_store(small_grade, tmp_path):
    from sklearn.metrics import roc_auc_score

    c, store, labels = small_grade
    _run(store, labels, tmp_path / "run", task="grade")
    # the run's own patients: every fold but one trained on them, so no metrics by default
    res, metrics = predict(tmp_path / "run", store, labels=labels, out=tmp_path / "p.csv")
    assert len(res) == 24 and res["in_sample"].all() and metrics is None
    _, m_in = predict(tmp_path / "run", store, labels=labels, in_sample_metrics=True)
    assert set(m_in) >= {"in_sample_auc", "n_in_sample"} and "auc" not in m_in
    res2, m2 = predict(tmp_path / "run", store)  # no labels: one row per slide
    assert len(res2) == len(c.bags) and m2 is None
    # a new cohort (other ids): scored out of sample, metrics of the fold ensemble
    new = make_mil_cohort(30, task="grade", seed=99, feature_dim=16, tiles_per_slide=(10, 20))
    new.labels["patient_id"] = "new-" + new.labels["patient_id"]
    new.labels["slide_id"] = "new-" + new.labels["slide_id"]
    bags_to_store({f"new-{k}": v for k, v in new.bags.items()}, tmp_path / "new.zarr")
    new.labels.to_csv(tmp_path / "new.csv", index=False)
    res3, m3 = predict(tmp_path / "run", tmp_path / "new.zarr", labels=tmp_path / "new.csv")
    assert not res3["in_sample"].any() and m3["n_patients"] == len(res3)
    assert m3["auc"] == pytest.approx(roc_auc_score(res3["label"], res3["prob_1"]), abs=1e-12)


# -- guards -----------------------------------------------------------------------------


def test_patient_in_two_test_folds_is_an_error(small_grade, tmp_path):
    _, store, labels = small_grade
    ids = pd.read_csv(labels)["patient_id"].unique().tolist()
    s = make_splits(ids, np.zeros(len(ids)), folds=3, val_fraction=0.2, seed=0)
    dup = s[(s["fold"] == 0) & (s["set"] == "test")].iloc[:1].assign(fold=1)
    s = s[~((s["fold"] == 1) & (s["patient_id"] == dup["patient_id"].iloc[0]))]
    pd.concat([s, dup]).to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(DataError, match="test set of more than one fold"):
        _run(store, labels, tmp_path / "r", task="grade", splits=str(tmp_path / "splits.csv"))


def test_untested_patient_and_missing_prediction_are_errors(small_grade, tmp_path):
    _, store, labels = small_grade
    ids = pd.read_csv(labels)["patient_id"].unique().tolist()
    s = make_splits(ids, np.zeros(len(ids)), folds=3, val_fraction=0.2, seed=0)
    s = s[~((s["set"] == "test") & (s["patient_id"] == ids[0]))]
    s.to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(DataError, match="in no test fold"):
        _run(store, labels, tmp_path / "r", task="grade", splits=str(tmp_path / "splits.csv"))
    full = make_splits(ids, np.zeros(len(ids)), folds=3, val_fraction=0.2, seed=0)
    preds = pd.DataFrame({"patient_id": ids[1:]})
    with pytest.raises(DataError, match="without a prediction"):
        _check_scored(preds, full)


def test_grade_classes_go_in_the_grades_order(small_grade, tmp_path):
    """Quadratic kappa reads the class order as the grades' order: text grades in words used
    to sort alphabetically without a word (high < low < mid); G10 sorted before G2."""
    from wsimm.train._tables import grade_classes

    g = pd.Series(["G10", "G2", "G1", "G2"])
    assert grade_classes(g, None, "l.csv", "grade") == ["G1", "G2", "G10"]
    assert grade_classes(pd.Series([3, 1, 2]), None, "l.csv", "grade") == [1, 2, 3]
    _, store, labels = small_grade
    lab = pd.read_csv(labels)
    lab["grade"] = lab["patient_id"].rank(method="dense").astype(int) % 3  # three grades
    words = {0: "low", 1: "mid", 2: "high"}
    lab.assign(grade=lab["grade"].map(words)).to_csv(tmp_path / "w.csv", index=False)
    with pytest.warns(WsimmWarning, match=r"w\.csv: grade classes are words.*high < low < mid"):
        res = _run(store, tmp_path / "w.csv", tmp_path / "r", task="grade", epochs=1)
    meta = json.loads((res.out / "fold_0" / "meta.json").read_text())
    assert meta["classes"] == ["high", "low", "mid"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", WsimmWarning)
        ex = load_examples(
            TrainConfig(labels=str(tmp_path / "w.csv"), grade_order=["low", "mid", "high"]),
            None,
            slides_required=False,
        )
    assert ex.classes == ["low", "mid", "high"]
    # the numeric grade each patient had comes back under its word
    back = ex.table.set_index("patient_id")["y"]
    want = lab.groupby("patient_id")["grade"].first()
    assert (back.loc[want.index] == want).all()
    with pytest.raises(DataError, match=r"w\.csv: grade value\(s\) mid are not in grade_order"):
        _run(store, tmp_path / "w.csv", tmp_path / "r2", task="grade", grade_order="low,high")
    with pytest.raises(ConfigError, match="grade_order must list two or more distinct"):
        TrainConfig(labels="l.csv", store="s", grade_order=["low", "low"]).validate()


def test_a_test_fold_without_a_class_is_named_before_training(small_grade, tmp_path):
    _, store, labels = small_grade
    lab = pd.read_csv(labels)
    rare = lab["patient_id"].iloc[0]
    lab = lab.assign(grade=np.where(lab["patient_id"] == rare, 2, lab["grade"].clip(0, 1)))
    lab.to_csv(tmp_path / "l.csv", index=False)
    with pytest.warns(WsimmWarning, match=r"fold\(s\) \d, \d have no patient of grade 2") as rec:
        res = _run(store, tmp_path / "l.csv", tmp_path / "r", task="grade", epochs=1)
    assert "patients per class: 0: " in str(
        next(w.message for w in rec if "grade 2" in str(w.message))
    )
    assert set(res.predictions["patient_id"]) == set(lab["patient_id"])  # all still scored


def test_labels_that_match_no_slide_warn_and_list_them(small_grade, tmp_path):
    _, store, labels = small_grade
    lab = pd.read_csv(labels)
    extra = pd.DataFrame(
        {
            "patient_id": ["PX1"],
            "slide_id": ["no-such-slide"],
            "grade": [1],
            "time": [1.0],
            "event": [1],
        }
    )
    pd.concat([lab, extra]).to_csv(tmp_path / "l.csv", index=False)
    with pytest.warns(WsimmWarning) as rec:
        res = _run(store, tmp_path / "l.csv", tmp_path / "r", task="grade", epochs=1)
    assert any("no-such-slide" in str(w.message) for w in rec)
    assert any("PX1" in str(w.message) for w in rec)
    assert "PX1" not in set(res.predictions["patient_id"])


def test_features_of_a_test_encoder_warn(small_grade, tmp_path, synthetic_slide):
    """A store tiled with test_tiny records it; training on such features says they are not
    image features. Features of a real encoder (here: synthetic bags) do not warn."""
    import warnings

    from wsimm.pipeline import tile_slides
    from wsimm.store import open_store
    from wsimm.testing import bags_to_store

    rep = tile_slides([synthetic_slide.path], tmp_path / "t.zarr", encoder="test_tiny",
                      quiet=True)  # fmt: skip
    assert not rep.failed
    fs = open_store(tmp_path / "t.zarr")
    (sid,) = fs.slides()
    assert fs.feature_attrs(sid, "test_tiny")["cfg"]["extra"] == {"test_encoder": True}

    c, store, labels = small_grade
    bags_to_store(c.bags, tmp_path / "tiny.zarr", encoder="test_tiny")
    with pytest.warns(WsimmWarning, match="features come from a test encoder"):
        _run(tmp_path / "tiny.zarr", labels, tmp_path / "r1", task="grade", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WsimmWarning)  # the suite's filter is lifted here
        _run(store, labels, tmp_path / "r2", task="grade", epochs=1)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.assign(time=d["time"].where(d.index != 3, np.nan)), "missing, not a number"),
        (lambda d: d.assign(time=d["time"].where(d.index != 3, -1.0)), "negative"),
        (lambda d: d.assign(event=d["event"].where(d.index != 3, 2)), "must be 0 or 1"),
        (lambda d: d.drop(columns="time"), "missing column"),
    ],
)
def test_bad_outcome_tables_are_one_line_errors(small_survival, tmp_path, edit, match):
    _, store, labels = small_survival
    edit(pd.read_csv(labels)).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=match) as e:
        _run(store, tmp_path / "bad.csv", tmp_path / "r", task="survival")
    assert "bad.csv" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_fold_without_events_is_an_error(small_survival, tmp_path):
    _, store, labels = small_survival
    lab = pd.read_csv(labels)
    keep = lab["patient_id"].drop_duplicates().iloc[:3]  # only three patients have events
    lab["event"] = lab["patient_id"].isin(keep).astype(int)
    lab.to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(DataError, match="no events") as e:
        _run(store, tmp_path / "few.csv", tmp_path / "r", task="survival", folds=5)
    assert "few.csv" in str(e.value)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_run_started_with_relative_paths_is_used_from_anywhere(
    small_grade, tmp_path, monkeypatch
):
    """config.yaml names the run's tables absolutely: a heatmap started in another directory
    still finds the labels and so scores each slide with the fold that held it out (with the
    relative path it fell back, silently, to every fold, models that had trained on it)."""
    import shutil

    from wsimm.heatmap._scores import choose_folds
    from wsimm.train import load_run

    c, store, labels = small_grade
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(labels, work / "labels.csv")
    monkeypatch.chdir(work)
    _run(store, "labels.csv", "run", task="grade", folds=2, epochs=1)
    cfg = TrainConfig.load(work / "run" / "config.yaml")
    assert cfg.labels == str(work / "labels.csv") and cfg.out == "run"
    monkeypatch.chdir(tmp_path)
    run = load_run(work / "run")
    sp = pd.read_csv(work / "run" / "splits.csv", dtype={"patient_id": str})
    slide, pid = c.labels[["slide_id", "patient_id"]].astype(str).iloc[0]
    held_out = int(sp[(sp["patient_id"] == pid) & (sp["set"] == "test")]["fold"].iloc[0])
    chosen, who = choose_folds(run, slide)
    assert who == pid and [int(run.folds[i].meta["fold"]) for i in chosen] == [held_out]
    (work / "labels.csv").unlink()  # the table gone: every fold, and a warning says so
    with pytest.warns(WsimmWarning, match="labels table is not there"):
        chosen, who = choose_folds(run, slide)
    assert who is None and len(chosen) == 2


def test_config_file_and_unknown_keys(small_grade, tmp_path):
    _, store, labels = small_grade
    (tmp_path / "run.yaml").write_text(
        f"store: {store}\nlabels: {labels}\ntask: grade\nepochs: 1\nfolds: 2\nmodel: mean\n"
    )
    cfg = TrainConfig.load(tmp_path / "run.yaml", out=str(tmp_path / "r"), epochs=2)
    assert cfg.epochs == 2 and cfg.model == "mean"  # flags win over the file
    (tmp_path / "bad.yaml").write_text("task: grade\nepoch: 3\n")
    with pytest.raises(ConfigError, match="unknown keys epoch"):
        TrainConfig.load(tmp_path / "bad.yaml")


def test_yaml_numbers_are_numbers(small_grade, tmp_path):
    """PyYAML reads ``lr: 1e-3`` (YAML 1.1) as the text "1e-3": every fold of such a run
    failed comparing a number with a string. A config means a number."""
    _, store, labels = small_grade
    (tmp_path / "run.yaml").write_text(
        "lr: 3e-4\nweight_decay: 1E-5\nfusion_kwargs: {contrastive: 1e-1}\n"
        "tune: {grid: {lr: [1e-4, 2.5e-3]}}\nlabel_col: 1e3x\n"
    )
    cfg = TrainConfig.load(tmp_path / "run.yaml")
    assert cfg.lr == 3e-4 and cfg.weight_decay == 1e-5
    assert cfg.fusion_kwargs["contrastive"] == 0.1 and cfg.tune["grid"]["lr"] == [1e-4, 2.5e-3]
    assert cfg.label_col == "1e3x"  # text that only starts like a number stays text
    (tmp_path / "lr.yaml").write_text("lr: 1e-2\nepochs: 1\nfolds: 2\n")
    res = train(TrainConfig.load(tmp_path / "lr.yaml", store=str(store), labels=str(labels),
                                 task="grade", out=str(tmp_path / "r")), quiet=True)  # fmt: skip
    assert not res.failed and res.metrics["mean"]["auc"] is not None


@pytest.mark.parametrize(
    "setting, said",
    [
        ("epochs: ten", "epochs must be a whole number >= 1, got 'ten'"),
        ("seed: abc", "seed must be a whole number >= 0, got 'abc'"),
        ("folds: 2.5", "folds must be a whole number >= 1, got 2.5"),
        ("lr: -1", "lr must be a number >= 0, got -1"),
        ("normalize: 3", "normalize must be true or false, got 3"),
        ("model_kwargs: {dropot: 0.2}", "MIL model 'abmil': bad options .*dropot"),
        ("model_kwargs: {dropout: 2.0}", "MIL model .abmil.: bad options .*dropout probability"),
        (
            "tune: {grid: {model_kwargs.dropout: [0.1, 2.0]}}",
            r"tune.grid candidate \{model_kwargs.dropout: 2.0\}: MIL model",
        ),
    ],
)
def test_bad_settings_are_one_error_naming_the_file(small_grade, tmp_path, setting, said):
    """Each used to be an "unexpected TypeError" (a wsimm bug, the CLI said) or a failure of
    every fold after the run folder was made."""
    _, store, labels = small_grade
    config = tmp_path / "run.yaml"
    config.write_text(f"{setting}\n")
    out = tmp_path / "r"
    with pytest.raises(ConfigError, match=f"^{config}: {said}"):
        train(TrainConfig.load(config, store=str(store), labels=str(labels), task="grade",
                               out=str(out)), quiet=True)  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    "option",
    [{"batch_size": 16}, {"multi_slide": "slides"}, {"workers": 4}, {"balance": "sampler"}],
)
def test_fusion_refuses_options_it_would_ignore(option):
    with pytest.raises(ConfigError, match="not used with --fusion graph"):
        TrainConfig(labels="l.csv", omics="o.csv", fusion="graph", **option).validate()
    TrainConfig(labels="l.csv", store="s.zarr", **option).validate()  # slide-only: honoured


def test_fold_saved_before_bag_norm_loads_and_predicts_the_same(tmp_path):
    """A fold whose meta.json and weights predate BagNorm (no ``bag_norm`` option, no
    running statistics) loads without it and gives the outputs it was saved with."""
    import torch

    from wsimm.mil import create_model
    from wsimm.train import FoldModel

    torch.manual_seed(0)
    old = create_model("abmil", 8, 2, bag_norm=False).eval()
    meta = {"task": "grade", "model": "abmil", "model_kwargs": {}, "in_dim": 8,
            "n_outputs": 2, "fold": 0}  # fmt: skip
    FoldModel(model=old, norm=None, bins=None, meta=meta).save(tmp_path / "fold_0")
    fm = FoldModel.load(tmp_path / "fold_0")
    assert fm.model.bag_norm is None
    x = torch.randn(30, 8)
    assert torch.equal(fm.model(x).logits, old(x).logits)
