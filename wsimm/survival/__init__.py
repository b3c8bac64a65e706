"""Survival analysis: time bins fitted on training patients, discrete-time and Cox losses,
and honest metrics (Harrell/Uno c-index, time-dependent AUC, integrated Brier score,
Kaplan-Meier with log-rank). Convention everywhere: ``event = 1`` means observed."""

from __future__ import annotations

from wsimm.survival._bins import TimeBins
from wsimm.survival._metrics import (
    brier_scores,
    c_index,
    censoring_survival,
    eval_times,
    integrated_brier_score,
    kaplan_meier,
    km_plot,
    logrank_test,
    td_auc,
    td_auc_mean,
    uno_c_index,
)

__all__ = [
    "TimeBins",
    "brier_scores",
    "c_index",
    "censoring_survival",
    "eval_times",
    "integrated_brier_score",
    "kaplan_meier",
    "km_plot",
    "logrank_test",
    "td_auc",
    "td_auc_mean",
    "uno_c_index",
]
