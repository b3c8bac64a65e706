"""Survival metrics in numpy: Harrell's and Uno's c-index, cumulative/dynamic time-dependent
AUC, the integrated Brier score (all IPCW terms use the censoring distribution of the training
patients), Kaplan-Meier, the log-rank test and a risk-group KM plot."""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

__all__ = [
    "brier_scores",
    "c_index",
    "integrated_brier_score",
    "kaplan_meier",
    "km_plot",
    "logrank_test",
    "td_auc",
    "uno_c_index",
]


def _arr(time, event):
    return np.asarray(time, np.float64), np.asarray(event).astype(bool)


def kaplan_meier(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times and the KM survival just after each."""
    t, e = _arr(time, event)
    ut = np.unique(t)
    at_risk = len(t) - np.searchsorted(np.sort(t), ut, side="left")
    d = np.bincount(np.searchsorted(ut, t[e]), minlength=len(ut))
    surv = np.cumprod(1.0 - d / np.maximum(at_risk, 1))
    return ut, surv


def _step(ut: np.ndarray, s: np.ndarray, at: np.ndarray, *, left: bool = False) -> np.ndarray:
    """Evaluate a right-continuous step function (``left`` = value just before ``at``)."""
    i = np.searchsorted(ut, at, side="left" if left else "right") - 1
    return np.where(i >= 0, s[np.clip(i, 0, None)], 1.0)


def _censoring(train_time, train_event):
    """KM of the censoring distribution G (censoring as the event)."""
    t, e = _arr(train_time, train_event)
    return kaplan_meier(t, ~e)


def _concordant(r: np.ndarray) -> np.ndarray:
    """``[i, j]`` = 1 where patient i has the higher risk, 0.5 on ties."""
    return (r[:, None] > r[None, :]) + 0.5 * (r[:, None] == r[None, :])


def c_index(time, event, risk) -> float:
    """Harrell's concordance: among comparable pairs (the shorter time is an event), the
    fraction where the shorter-lived patient has the higher risk (ties in risk count half)."""
    t, e = _arr(time, event)
    r = np.asarray(risk, np.float64)
    comp = (t[:, None] < t[None, :]) & e[:, None]
    if not comp.any():
        return float("nan")
    return float((_concordant(r) * comp).sum() / comp.sum())


def uno_c_index(time, event, risk, train_time, train_event, tau: float | None = None) -> float:
    """Uno's c-index: pairs weighted by ``1 / G(t_i)^2`` (censoring KM from training
    patients), truncated at ``tau`` (default: the last training follow-up time)."""
    t, e = _arr(time, event)
    r = np.asarray(risk, np.float64)
    gt, gs = _censoring(train_time, train_event)
    if tau is None:
        tau = float(np.max(np.asarray(train_time)))
    g = _step(gt, gs, t, left=True)
    ok = e & (t < tau) & (g > 0)
    w = np.where(ok, 1.0 / np.maximum(g, 1e-12) ** 2, 0.0)
    comp = (t[:, None] < t[None, :]) * w[:, None]
    if comp.sum() == 0:
        return float("nan")
    return float((_concordant(r) * comp).sum() / comp.sum())


def td_auc(time, event, risk, times, train_time, train_event) -> np.ndarray:
    """Cumulative/dynamic AUC at each of ``times`` (Uno 2007): cases are patients with an
    event by ``t`` (weighted by ``1 / G(t_i)``), controls those still event-free after ``t``."""
    t, e = _arr(time, event)
    r = np.asarray(risk, np.float64)
    gt, gs = _censoring(train_time, train_event)
    w = 1.0 / np.maximum(_step(gt, gs, t, left=True), 1e-12)
    out = []
    for u in np.atleast_1d(times):
        case = e & (t <= u)
        ctrl = t > u
        if not case.any() or not ctrl.any():
            out.append(np.nan)
            continue
        rc, rn = r[case][:, None], r[ctrl][None, :]
        conc = (rc > rn) + 0.5 * (rc == rn)
        out.append(float((conc * w[case][:, None]).sum() / (w[case].sum() * ctrl.sum())))
    return np.asarray(out)


def brier_scores(time, event, surv_at, times, train_time, train_event) -> np.ndarray:
    """IPCW Brier score (Graf 1999) at each of ``times``; ``surv_at`` is ``(n, len(times))``,
    the predicted probability of being event-free at each time."""
    t, e = _arr(time, event)
    gt, gs = _censoring(train_time, train_event)
    g_ti = np.maximum(_step(gt, gs, t, left=True), 1e-12)
    out = []
    for j, u in enumerate(np.atleast_1d(times)):
        s = surv_at[:, j]
        g_u = max(float(_step(gt, gs, np.array([u]))[0]), 1e-12)
        died = (t <= u) & e
        alive = t > u
        out.append(float(np.mean(died * s**2 / g_ti + alive * (1 - s) ** 2 / g_u)))
    return np.asarray(out)


def integrated_brier_score(time, event, surv_at, times, train_time, train_event) -> float:
    """Trapezoidal integral of the Brier score over ``times``, divided by their span."""
    times = np.asarray(times, np.float64)
    bs = brier_scores(time, event, surv_at, times, train_time, train_event)
    if len(times) < 2:
        return float(bs[0])
    return float(np.trapezoid(bs, times) / (times[-1] - times[0]))


def eval_times(train_time, train_event, test_time, n: int = 20) -> np.ndarray:
    """A grid for td-AUC and IBS: between the 10th and 80th percentile of the training event
    times, kept inside the test follow-up."""
    t, e = _arr(train_time, train_event)
    lo, hi = np.quantile(t[e], [0.1, 0.8])
    hi = min(hi, float(np.max(test_time)) * 0.999)
    lo = min(lo, hi)
    return np.unique(np.linspace(lo, hi, n))


def logrank_test(time, event, group) -> tuple[float, float]:
    """Multi-group log-rank test: (chi-square statistic, p-value)."""
    t, e = _arr(time, event)
    g = np.asarray(group)
    levels = np.unique(g)
    if len(levels) < 2:
        return 0.0, 1.0
    ut = np.unique(t[e])
    obs_exp = np.zeros(len(levels))
    var = np.zeros((len(levels), len(levels)))
    for u in ut:
        at = t >= u
        n = at.sum()
        d = np.sum(e & (t == u))
        n_g = np.array([np.sum(at & (g == lv)) for lv in levels])
        d_g = np.array([np.sum(e & (t == u) & (g == lv)) for lv in levels])
        obs_exp += d_g - d * n_g / n
        if n > 1:
            p = n_g / n
            var += d * (n - d) / (n - 1) * (np.diag(p) - np.outer(p, p))
    k = len(levels) - 1
    chi2 = float(obs_exp[:k] @ np.linalg.pinv(var[:k, :k]) @ obs_exp[:k])
    return chi2, float(stats.chi2.sf(chi2, k))


def km_plot(
    time,
    event,
    path: str | os.PathLike[str],
    *,
    risk=None,
    group=None,
    groups: int = 2,
    title: str = "",
) -> float:
    """Kaplan-Meier curves of risk groups with the log-rank p-value; writes a PNG and returns
    the p-value. Groups are ``group`` (0 = lowest risk) or ``risk`` cut at its quantiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, e = _arr(time, event)
    if group is None:
        r = np.asarray(risk, np.float64)
        g = np.searchsorted(np.quantile(r, np.linspace(0, 1, groups + 1)[1:-1]), r, side="right")
    else:
        g = np.asarray(group, int)
        groups = max(groups, int(g.max()) + 1)
    _, p = logrank_test(t, e, g)
    names = (
        ["low risk", "high risk"] if groups == 2 else [f"risk group {i + 1}" for i in range(groups)]
    )
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for i in range(groups):
        sel = g == i
        if not sel.any():
            continue
        ut, s = kaplan_meier(t[sel], e[sel])
        ax.step(np.r_[0, ut], np.r_[1, s], where="post", label=f"{names[i]} (n={sel.sum()})")
        cens = sel & ~e
        ax.plot(t[cens], _step(ut, s, t[cens]), "|", color=ax.lines[-1].get_color(), ms=6)
    ax.set_xlabel("time")
    ax.set_ylabel("event-free probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}  log-rank p = {p:.2g}".strip())
    ax.legend(loc="lower left", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return p
