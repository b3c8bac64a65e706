"""Epoch selection on tiny cohorts: a validation split of classes the training patients lack
still selects an epoch (the demo's 9-patient run lost two of three folds to this)."""

from __future__ import annotations

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
    """Labels unrelated to the bags and a learning rate that overfits at once: validation loss
    is lowest after the first epoch, and the run says so (metrics.json 'stalled' + a note)."""
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
    first = [r["fold"] for r in res.metrics["folds"] if r["best_epoch"] == 0]
    assert first, [r["best_epoch"] for r in res.metrics["folds"]]
    assert res.metrics["stalled"] == {"abmil": first}
    notes = [str(w.message) for w in said if "kept the first epoch" in str(w.message)]
    assert len(notes) == 1 and f"abmil fold(s) {', '.join(map(str, first))}" in notes[0]
    assert stalled_folds(_cfg(1), res.metrics) == {}  # one epoch: nothing to compare
    # a fold kept at its first epoch was restarted twice first (restarts: 2, the default),
    # and each fold keeps the attempt with the lowest validation loss
    assert all(r["attempts"] == 3 for r in res.metrics["folds"] if r["best_epoch"] == 0)
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
