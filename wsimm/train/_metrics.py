"""Per-fold metrics: grading (AUC, balanced accuracy, F1, quadratic kappa) and survival
(Harrell and Uno c-index, time-dependent AUC, integrated Brier score)."""

from __future__ import annotations

import math
import warnings

import numpy as np

#: the metric each task reports first (DESIGN.md contract keys come first)
METRIC_KEYS = {
    "grade": ["auc", "balanced_accuracy", "kappa", "f1", "accuracy"],
    "survival": ["c_index", "c_index_uno", "td_auc", "ibs"],
}


def grade_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """``auc`` (binary, or one-vs-rest macro), ``balanced_accuracy``, ``f1`` (macro),
    ``kappa`` (quadratic weights), ``accuracy``. AUC is NaN when the fold lacks a class."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        roc_auc_score,
    )

    y = np.asarray(y, int)
    pred = prob.argmax(1)
    k = prob.shape[1]
    present = np.unique(y)
    if len(present) < 2:
        auc = float("nan")
    elif k == 2:
        auc = float(roc_auc_score(y, prob[:, 1]))
    else:
        # macro over the classes present in this fold (a missing class has no ROC curve)
        aucs = [roc_auc_score(y == c, prob[:, c]) for c in present]
        auc = float(np.mean(aucs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on folds missing a predicted class
        return {
            "auc": auc,
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="macro", labels=list(range(k)))),
            "kappa": float(cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k)))),
            "accuracy": float(accuracy_score(y, pred)),
        }


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    surv_fn,
    train_time: np.ndarray,
    train_event: np.ndarray,
) -> dict[str, float]:
    """``c_index`` (Harrell), ``c_index_uno``, ``td_auc`` (the cumulative/dynamic AUC over the
    evaluation grid, summarised as scikit-survival's ``mean_auc``) and ``ibs``;
    ``surv_fn(times) -> (n, len(times))`` gives predicted event-free probabilities. IPCW
    weights use the training patients' censoring. Each equals scikit-survival's metric."""
    from wsimm.survival import (
        c_index,
        eval_times,
        integrated_brier_score,
        td_auc,
        td_auc_mean,
        uno_c_index,
    )

    times = eval_times(train_time, train_event, time)
    aucs = td_auc(time, event, risk, times, train_time, train_event)
    ok = np.isfinite(aucs)
    return {
        "c_index": c_index(time, event, risk),
        "c_index_uno": uno_c_index(time, event, risk, train_time, train_event),
        # over the grid times that have cases and controls (scikit-survival given those times)
        "td_auc": td_auc_mean(time, event, aucs[ok], times[ok]) if ok.any() else np.nan,
        "ibs": integrated_brier_score(time, event, surv_fn(times), times, train_time, train_event),
    }


def summarise_folds(task: str, rows: list[dict]) -> tuple[dict, dict]:
    """Mean and standard deviation over folds of each metric (NaN folds left out)."""
    keys = list(METRIC_KEYS[task])
    keys += sorted({k for r in rows for k in r if "_without_" in k})
    # uncertainty weighting (fusion_kwargs uncertainty): the same passes unweighted, coverage
    keys += sorted(
        {
            k
            for r in rows
            for k in r
            if k.endswith("_unweighted") or k in ("interval_coverage", "interval_mass")
        }
    )
    mean, std = {}, {}
    for key in keys:
        v = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
        v = v[np.isfinite(v)]
        mean[key] = float(v.mean()) if len(v) else math.nan
        std[key] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return mean, std
