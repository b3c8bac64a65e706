"""Epoch selection on tiny cohorts: a validation split of classes the training patients lack
still selects an epoch (the demo's 9-patient run lost two of three folds to this)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

import torch

from wsimm.train._config import TrainConfig
from wsimm.train._fit import EpochSelection, _Objective


def test_validation_loss_is_finite_for_classes_absent_from_training():
    cfg = TrainConfig(task="grade", out="unused")
    train = pd.DataFrame({"y": [0, 0, 1, 1, 1]})  # class 2 only among validation patients
    obj = _Objective(cfg, train, None, 3)
    assert obj.weight[2] == 1.0 and obj.weight[0] == pytest.approx(5 / 2 / 3)
    logits = torch.zeros(2, 3)
    val = obj(logits, {"y": torch.tensor([2, 2])}, torch.tensor([0, 1]))
    assert math.isfinite(float(val)) and float(val) == pytest.approx(np.log(3))


def test_selection_without_a_finite_validation_loss_says_why():
    sel = EpochSelection(patience=3, label="fold 1: ")
    model = torch.nn.Linear(2, 1)
    for e in range(2):
        sel.end_epoch(model, e, 0.5, float("nan"), {})
    with pytest.raises(FloatingPointError, match="no epoch had a finite validation loss"):
        sel.restore(model)


def test_a_network_kept_at_its_first_epoch_is_reported(tmp_path):
    """Labels unrelated to the bags and a learning rate that overfits at once: the kept epoch
    is the first or no better than a constant prediction, and the run says so (metrics.json
    'stalled' + a note)."""
    import warnings

    from wsimm.errors import WsimmWarning
    from wsimm.testing import bags_to_store, make_mil_cohort
    from wsimm.train import train
    from wsimm.train._run import stalled_folds

    c = make_mil_cohort(30, seed=3, feature_dim=16, tiles_per_slide=(10, 20))
    labels = c.labels.copy()
    pats = c.patients["patient_id"].to_numpy()
    shuffled = np.random.default_rng(0).permutation(c.patients["grade"].to_numpy())
    labels["grade"] = labels["patient_id"].map(dict(zip(pats, shuffled, strict=True)))
    bags_to_store(c.bags, tmp_path / "s.zarr")
    labels.to_csv(tmp_path / "l.csv", index=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", WsimmWarning)
        res = train(store=str(tmp_path / "s.zarr"), labels=str(tmp_path / "l.csv"),
                    task="grade", out=str(tmp_path / "r"), folds=3, epochs=6, lr=0.05,
                    quiet=True, seed=0)  # fmt: skip
    folds = res.metrics["folds"]
    first = [r["fold"] for r in folds if r["best_epoch"] == 0 or not r["left_flat_start"]]
    assert first, [(r["best_epoch"], r["left_flat_start"]) for r in folds]
    assert res.metrics["stalled"] == {"abmil": first}
    notes = [str(w.message) for w in said if "kept the first epoch" in str(w.message)]
    assert len(notes) == 1 and f"abmil fold(s) {', '.join(map(str, first))}" in notes[0]
    assert stalled_folds(_cfg(1), res.metrics) == {}  # one epoch: nothing to compare
    # a fold kept at its first epoch was restarted twice first (restarts: 2, the default),
    # and each fold keeps the attempt with the lowest validation loss
    assert all(r["attempts"] == 3 for r in folds if r["fold"] in first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        once = train(store=str(tmp_path / "s.zarr"), labels=str(tmp_path / "l.csv"),
                     task="grade", out=str(tmp_path / "r0"), folds=3, epochs=6, lr=0.05,
                     quiet=True, seed=0, restarts=0)  # fmt: skip
    assert [r["attempts"] for r in once.metrics["folds"]] == [1, 1, 1]
    for r, r0 in zip(res.metrics["folds"], once.metrics["folds"], strict=True):
        h, h0 = (pd.read_csv(x / f"fold_{r['fold']}" / "history.csv") for x in (res.out, once.out))
        assert h["val_loss"].min() <= h0["val_loss"].min()
        if r["attempts"] == 1:  # no restart: the same run
            assert r == r0


def test_cox_restarts_after_a_flat_start_switch_bag_norm_on(tmp_path):
    """The Cox loss without ``bag_norm`` in ``model_kwargs``: the first attempt trains without
    BagNorm, restarts after a flat start with it, and the attempt with the lowest validation
    loss is kept (saved with the setting it was trained with). A ``bag_norm`` the user sets is
    kept in every attempt; the discrete-time NLL keeps the model's setting."""
    from wsimm.testing import bags_to_store, make_mil_cohort
    from wsimm.train import train

    c = make_mil_cohort(45, task="survival", seed=2, feature_dim=16, tiles_per_slide=(10, 20))
    labels = c.labels.copy()  # outcomes unrelated to the bags: flat starts
    perm = np.random.default_rng(0).permutation(len(c.patients))
    shuffled = c.patients.iloc[perm].set_index(c.patients["patient_id"])
    for col in ("time", "event"):
        labels[col] = labels["patient_id"].map(shuffled[col])
    bags_to_store(c.bags, tmp_path / "s.zarr")
    labels.to_csv(tmp_path / "l.csv", index=False)

    def run(name, **kw):
        return train(store=str(tmp_path / "s.zarr"), labels=str(tmp_path / "l.csv"),
                     task="survival", out=str(tmp_path / name), folds=3, epochs=6, lr=0.05,
                     quiet=True, seed=0, **{"survival_loss": "cox", **kw})  # fmt: skip

    def kept(res):
        meta = [json.loads((res.out / f"fold_{k}" / "meta.json").read_text()) for k in range(3)]
        return [(m["attempts"], m["restart_kept"], m["model_kwargs"]["bag_norm"]) for m in meta]

    auto = run("auto")
    got = kept(auto)
    assert any(a > 1 for a, _, _ in got), got  # some fold was restarted
    for (_a, which, bn), r in zip(got, auto.metrics["folds"], strict=True):
        assert bn == (which > 0) == r["bag_norm"], got  # restarts, and only they, use BagNorm
    off = run("off", model_kwargs={"bag_norm": False})
    assert not any(bn for _, _, bn in kept(off))
    once = run("once", restarts=0)  # the first attempt alone
    for r, r0 in zip(auto.metrics["folds"], once.metrics["folds"], strict=True):
        h, h0 = (pd.read_csv(x / f"fold_{r['fold']}" / "history.csv") for x in (auto.out, once.out))
        assert h["val_loss"].min() <= h0["val_loss"].min()
        if r["attempts"] == 1:  # no restart: the same run
            assert (
                h["val_loss"].tolist() == h0["val_loss"].tolist() and r["c_index"] == r0["c_index"]
            )
    nll = run("nll", survival_loss="nll")
    assert not any(bn for _, _, bn in kept(nll))


def _cfg(epochs):
    return TrainConfig(task="grade", out="unused", epochs=epochs)


def test_stalled_folds_cover_the_model_and_network_baselines():
    from wsimm.train._run import stalled_folds

    metrics = {
        "model": "graph fusion",
        "folds": [{"fold": 0, "best_epoch": 3}, {"fold": 1, "best_epoch": 0}],
        "baselines": {
            "clinical_cox": {"folds": [{"fold": 0, "best_epoch": -1}]},
            "concat_fusion": {
                "folds": [{"fold": 0, "best_epoch": 0}, {"fold": 4, "best_epoch": 0}]
            },
            "omics_net": {"folds": [{"fold": 0, "best_epoch": 5}]},
        },
    }
    assert stalled_folds(_cfg(40), metrics) == {"graph fusion": [1], "concat_fusion": [0, 4]}
    assert stalled_folds(_cfg(1), metrics) == {}


@pytest.mark.parametrize(
    ("balance", "expected"),
    [
        ("weights", np.log(2)),  # classes weighed equal: the constant is 1/2, 1/2
        ("sampler", np.log(2)),  # batches drawn balanced: the same
        ("none", -(0.5 * np.log(0.75) + 0.5 * np.log(0.25))),  # the training shares 3:1
    ],
)
def test_the_flat_start_loss_is_the_best_constant_for_the_objective(balance, expected):
    cfg = TrainConfig(task="grade", out="unused", balance=balance)
    train = pd.DataFrame({"y": [0, 0, 0, 1]})
    obj = _Objective(cfg, train, None, 2)
    val = {"y": torch.tensor([0, 1, 0, 1])}
    got = obj.constant_loss(val)
    assert got == pytest.approx(expected, rel=1e-5)
    surv = _Objective(TrainConfig(task="survival", out="u"), train, None, 1)
    assert surv.constant_loss(val) is None  # survival: no floor
    if balance == "sampler":  # the constant a balanced sampler trains towards: uniform
        return
    # on the training patients no other constant does better under the objective
    tg_tr = obj.targets(train, "cpu")
    best = obj.constant_loss(tg_tr)
    for p in np.linspace(0.05, 0.95, 19):
        lg = torch.log(torch.tensor([[p, 1 - p]], dtype=torch.float32)).expand(4, 2)
        assert float(obj(lg, tg_tr, torch.arange(4))) >= best - 1e-6


def test_patience_waits_until_an_epoch_beats_the_flat_start():
    """Validation loss that rises above chance before it falls (what small cohorts show):
    without a floor early stopping keeps epoch 0; with one it trains on and keeps the dip."""
    model = torch.nn.Linear(2, 1)
    curve = [0.70, 0.72, 0.80, 0.90, 0.85, 0.80, 0.75, 0.71, 0.69, 0.60, 0.55, 0.58, 0.6, 0.6]

    def run(floor):
        sel = EpochSelection(patience=3, floor=floor)
        for e, v in enumerate(curve):
            if sel.end_epoch(model, e, 0.5, v, {}):
                break
        return sel, e

    plain, stop = run(None)
    assert (plain.best_epoch, stop, plain.left_flat_start) == (0, 3, False)
    floored, stop = run(np.log(2))
    assert (floored.best_epoch, stop, floored.left_flat_start) == (10, 13, True)
    never, stop = run(0.5)  # never below the floor: trains to the last epoch, says so
    assert stop == len(curve) - 1 and not never.left_flat_start


def test_graph_fusion_keeps_its_linear_part_where_no_epoch_beats_it(tmp_path):
    """The untrained graph fusion network is its wide (linear) part alone, booked as epoch -1:
    a deep part that never beats it on the validation patients (here wrecked by a huge
    learning rate) is dropped, the fold's risks are the linear terms, and the run says so
    (``deep_part_kept: 0`` per fold, ``wide_only``); a sane run keeps epochs >= 0 too."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    import warnings

    import wsimm
    from wsimm.errors import WsimmWarning
    from wsimm.train import train

    co = wsimm.make_cohort(60, seed=4, weights=(0.0, 1.0, 1.0), feature_dim=8)
    p = co.save(tmp_path)
    runs = {}
    for name, lr in (("wrecked", 50.0), ("sane", 1e-3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            runs[name] = train(
                labels=str(p["labels"]), omics=str(p["omics"]), clinical=str(p["clinical"]),
                gene_groups=str(p["gene_groups"]), task="survival", fusion="graph",
                survival_loss="cox", folds=3, epochs=3, lr=lr, baselines="none", quiet=True,
                out=str(tmp_path / name), threads=1,
            )  # fmt: skip
    m = runs["wrecked"].metrics
    assert m["wide_only"] == [0, 1, 2]
    assert all(f["deep_part_kept"] == 0 and f["best_epoch"] == -1 for f in m["folds"])
    hist = pd.read_csv(runs["wrecked"].out / "fold_0" / "history.csv")
    assert (
        hist["epoch"].tolist()[:2] == [-1, 0]
        and hist["val_loss"].iloc[1] > hist["val_loss"].iloc[0]
    )
    pred = runs["wrecked"].predictions
    np.testing.assert_allclose(
        pred["risk"], pred["linear_clinical"] + pred["linear_omics"], atol=1e-4
    )
    sane = runs["sane"].metrics
    assert all(f["deep_part_kept"] in (0, 1) for f in sane["folds"])
    assert sane.get("wide_only", []) != [0, 1, 2]


def test_a_fold_whose_linear_part_failed_has_no_wide_alone_candidate(tmp_path, monkeypatch):
    """When a fold's wide part cannot be fitted, its untrained network is a constant, not a
    linear model: no epoch -1 is booked and no ``deep_part_kept`` is reported."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    import wsimm
    from wsimm.errors import WsimmWarning
    from wsimm.fusion import LinearBaseline
    from wsimm.train import train

    def broken(self, *a, **k):
        raise np.linalg.LinAlgError("singular matrix (injected)")

    monkeypatch.setattr(LinearBaseline, "fit", broken)
    co = wsimm.make_cohort(36, seed=5, weights=(0.0, 1.0, 1.0), feature_dim=8)
    p = co.save(tmp_path)
    with pytest.warns(WsimmWarning, match="linear .wide. part could not be fitted"):
        res = train(
            labels=str(p["labels"]), omics=str(p["omics"]), clinical=str(p["clinical"]),
            gene_groups=str(p["gene_groups"]), task="survival", fusion="graph",
            survival_loss="cox", folds=2, epochs=2, baselines="none", quiet=True,
            out=str(tmp_path / "run"), threads=1,
        )  # fmt: skip
    assert all("deep_part_kept" not in f and f["best_epoch"] >= 0 for f in res.metrics["folds"])
    assert "wide_only" not in res.metrics
    assert pd.read_csv(res.out / "fold_0" / "history.csv")["epoch"].min() == 0
