"""``wsimm train`` / ``wsimm predict``: patient-level cross-validation of MIL models that
cannot leak, the run directory, and applying a run to new slides."""

from __future__ import annotations

from wsimm.train._config import TrainConfig
from wsimm.train._data import BagSource, FeatureNorm
from wsimm.train._fold import FoldModel
from wsimm.train._metrics import grade_metrics, survival_metrics
from wsimm.train._predict import load_run, predict
from wsimm.train._run import RunResult, train
from wsimm.train._splits import check_splits, load_splits, make_splits
from wsimm.train._tables import Examples, load_examples

__all__ = [
    "BagSource",
    "Examples",
    "FeatureNorm",
    "FoldModel",
    "RunResult",
    "TrainConfig",
    "check_splits",
    "grade_metrics",
    "load_examples",
    "load_run",
    "load_splits",
    "make_splits",
    "predict",
    "survival_metrics",
    "train",
]
