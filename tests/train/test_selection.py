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
