"""Survival metrics in numpy: Harrell's and Uno's c-index, cumulative/dynamic time-dependent
AUC, the (integrated) Brier score, Kaplan-Meier, the log-rank test and a risk-group KM plot.

Every metric that scikit-survival computes is computed here by the same definition, ties
included, and equals it to floating-point rounding (``tests/survival`` checks this against
scikit-survival on tied and untied data):

- comparable pairs (Harrell, Uno): ``i`` had the event and ``t_i < t_j``, or ``t_i == t_j`` and
  ``j`` was censored (an event is taken to come before a censoring at the same time, as
  lifelines and scikit-survival count it); risks within ``tied_tol`` of each other are a tie
  and count one half;
- the censoring distribution ``G`` for IPCW is the reverse Kaplan-Meier of the **training**
  patients, in which the events at a time leave the risk set before the censorings at that time,
  evaluated right-continuously (``G(t)`` includes the censorings at ``t``).

Where scikit-survival raises instead of answering, wsimm answers and says so in the docstring:
``G`` is held at its last value past the last training time, and an event whose ``G`` is 0
gets no weight.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

__all__ = [
    "brier_scores",
    "c_index",
    "censoring_survival",
    "integrated_brier_score",
    "kaplan_meier",
    "km_plot",
    "logrank_test",
    "td_auc",
    "td_auc_mean",
    "uno_c_index",
]

#: risks closer than this are a tie (scikit-survival's ``tied_tol``)
TIED_TOL = 1e-8


def _arr(time, event):
    return np.asarray(time, np.float64), np.asarray(event).astype(bool)


def _counts(t: np.ndarray, e: np.ndarray):
    """Distinct times, and at each: number at risk (time >= u), events, censorings."""
    ut = np.unique(t)
    at_risk = len(t) - np.searchsorted(np.sort(t), ut, side="left")
    pos = np.searchsorted(ut, t)
    d = np.bincount(pos[e], minlength=len(ut))
    c = np.bincount(pos[~e], minlength=len(ut))
    return ut, at_risk, d, c


def kaplan_meier(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times and the KM survival just after each."""
    t, e = _arr(time, event)
    ut, at_risk, d, _ = _counts(t, e)
    surv = np.cumprod(1.0 - d / np.maximum(at_risk, 1))
    return ut, surv


def _step(ut: np.ndarray, s: np.ndarray, at: np.ndarray, *, left: bool = False) -> np.ndarray:
    """Evaluate a right-continuous step function (``left`` = value just before ``at``); 1 before
    the first step, the last value after the last."""
    i = np.searchsorted(ut, at, side="left" if left else "right") - 1
    return np.where(i >= 0, s[np.clip(i, 0, None)], 1.0)


def censoring_survival(train_time, train_event) -> tuple[np.ndarray, np.ndarray]:
    """The censoring distribution ``G`` (reverse Kaplan-Meier) of the training patients: its
    distinct times and ``G`` just after each. At a time with both, the events leave the risk
    set first. No censoring at all gives ``G = 1``."""
    t, e = _arr(train_time, train_event)
    ut, at_risk, d, c = _counts(t, e)
    if e.all():
        return ut, np.ones(len(ut))
    n = at_risk - d  # still under observation once that time's events are out
    ratio = np.divide(c, n, out=np.zeros(len(ut)), where=c != 0)
    return ut, np.cumprod(1.0 - ratio)


def _g_at(train_time, train_event, at) -> np.ndarray:
    gt, gs = censoring_survival(train_time, train_event)
    return _step(gt, gs, np.asarray(at, np.float64))


def _concordance(t, e, r, w, tied_tol: float) -> float:
    """Weighted concordance over comparable pairs (see the module docstring); ``w`` weighs each
    pair by its earlier patient ``i``. Rows are taken in blocks, so memory stays bounded."""
    num = den = 0.0
    rows = np.flatnonzero(e & (w > 0))
    for s in range(0, len(rows), 1024):
        i = rows[s : s + 1024]
        ti, ri, wi = t[i][:, None], r[i][:, None], w[i][:, None]
        comp = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        tie = np.abs(r[None, :] - ri) <= tied_tol
        conc = (r[None, :] < ri) & ~tie
        num += float((wi * comp * (conc + 0.5 * tie)).sum())
        den += float((wi * comp).sum())
    return num / den if den > 0 else float("nan")


def c_index(time, event, risk, *, tied_tol: float = TIED_TOL) -> float:
    """Harrell's concordance: among comparable pairs, the fraction where the patient with the
    earlier event has the higher risk (ties in risk count half). Equals scikit-survival's
    ``concordance_index_censored`` and lifelines' ``concordance_index`` (on ``-risk``); NaN
    when no pair is comparable."""
    t, e = _arr(time, event)
    r = np.asarray(risk, np.float64)
    return _concordance(t, e, r, np.ones(len(t)), tied_tol)


def uno_c_index(
    time,
    event,
    risk,
    train_time,
    train_event,
    tau: float | None = None,
    *,
    tied_tol: float = TIED_TOL,
) -> float:
    """Uno's c-index: each comparable pair weighted by ``1 / G(t_i)^2`` (censoring from the
    training patients), only events before ``tau`` counted. Equals scikit-survival's
    ``concordance_index_ipcw`` with the same ``tau``. The default ``tau`` is the last training
    time (``G`` is known up to there); ``tau=np.inf`` truncates nothing."""
    t, e = _arr(time, event)
    r = np.asarray(risk, np.float64)
    if tau is None:
        tau = float(np.max(np.asarray(train_time, np.float64)))
    g = _g_at(train_time, train_event, t)
    ok = e & (t < tau) & (g > 0)
    w = np.where(ok, 1.0 / np.where(ok, g, 1.0) ** 2, 0.0)
    return _concordance(t, e, r, w, tied_tol)


def _risk_matrix(risk, n_times: int) -> np.ndarray:
    r = np.asarray(risk, np.float64)
    return np.repeat(r[:, None], n_times, 1) if r.ndim == 1 else r


def td_auc(
    time, event, risk, times, train_time, train_event, *, tied_tol: float = TIED_TOL
) -> np.ndarray:
    """Cumulative/dynamic AUC at each of ``times`` (Uno 2007): cases are patients with an event
    by ``t`` (weighted by ``1 / G(t_i)``), controls those still event-free after ``t``; ties in
    risk count half. ``risk`` is ``(n,)`` or ``(n, len(times))``. Equals the first output of
    scikit-survival's ``cumulative_dynamic_auc``; NaN at a time with no case or no control."""
    t, e = _arr(time, event)
    times = np.atleast_1d(np.asarray(times, np.float64))
    r = _risk_matrix(risk, len(times))
    g = _g_at(train_time, train_event, t)
    w = np.where(e & (g > 0), 1.0 / np.where(g > 0, g, 1.0), 0.0)
    out = []
    for j, u in enumerate(times):
        case = e & (t <= u)
        ctrl = t > u
        if not case.any() or not ctrl.any() or w[case].sum() == 0:
            out.append(np.nan)
            continue
        rc, rn = r[case, j][:, None], r[ctrl, j][None, :]
        tie = np.abs(rc - rn) <= tied_tol
        conc = ((rc > rn) & ~tie) + 0.5 * tie
        out.append(float((conc * w[case][:, None]).sum() / (w[case].sum() * ctrl.sum())))
    return np.asarray(out)


def td_auc_mean(time, event, aucs, times) -> float:
    """The summary of :func:`td_auc` over ``times``: each AUC weighted by the drop of the test
    patients' Kaplan-Meier curve at its time, over the whole drop (scikit-survival's
    ``mean_auc``, Lambert and Chevret 2014)."""
    aucs = np.asarray(aucs, np.float64)
    times = np.atleast_1d(np.asarray(times, np.float64))
    if len(times) == 1:
        return float(aucs[0])
    ut, s = kaplan_meier(time, event)
    st = _step(ut, s, times)
    d = -np.diff(np.r_[1.0, st])
    if 1.0 - st[-1] <= 0:
        return float("nan")
    return float((aucs * d).sum() / (1.0 - st[-1]))


def brier_scores(time, event, surv_at, times, train_time, train_event) -> np.ndarray:
    """IPCW Brier score (Graf 1999) at each of ``times``; ``surv_at`` is ``(n, len(times))``,
    the predicted probability of being event-free at each time. Equals scikit-survival's
    ``brier_score`` (a patient whose ``G`` is 0 adds nothing)."""
    t, e = _arr(time, event)
    times = np.atleast_1d(np.asarray(times, np.float64))
    surv_at = np.asarray(surv_at, np.float64).reshape(len(t), len(times))
    g_t = _g_at(train_time, train_event, t)
    g_u = _g_at(train_time, train_event, times)
    inv_t = np.divide(1.0, g_t, out=np.zeros(len(t)), where=g_t > 0)
    out = []
    for j, u in enumerate(times):
        s = surv_at[:, j]
        died = (t <= u) & e
        alive = t > u
        inv_u = 1.0 / g_u[j] if g_u[j] > 0 else 0.0
        out.append(float(np.mean(died * s**2 * inv_t + alive * (1 - s) ** 2 * inv_u)))
    return np.asarray(out)


def integrated_brier_score(time, event, surv_at, times, train_time, train_event) -> float:
    """Trapezoidal integral of the Brier score over ``times``, divided by their span (equals
    scikit-survival's ``integrated_brier_score``)."""
    times = np.asarray(times, np.float64)
    bs = brier_scores(time, event, surv_at, times, train_time, train_event)
    if len(times) < 2:
        return float(bs[0])
    return float(np.trapezoid(bs, times) / (times[-1] - times[0]))


def eval_times(train_time, train_event, test_time, n: int = 20) -> np.ndarray:
    """A grid for td-AUC and IBS: between the 10th and 80th percentile of the training event
    times, kept inside the test follow-up ``[min, max)`` (where scikit-survival accepts it)."""
    t, e = _arr(train_time, train_event)
    test_time = np.asarray(test_time, np.float64)
    lo, hi = np.quantile(t[e], [0.1, 0.8])
    hi = min(hi, float(np.max(test_time)) * 0.999)
    lo = max(min(lo, hi), float(np.min(test_time)))
    hi = max(hi, lo)
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
