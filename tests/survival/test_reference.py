"""wsimm.survival against scikit-survival (and lifelines for Harrell) on tied and untied data.

The draws mimic TCGA tables: integer months (ties in time, events and censorings at the same
time), risks rounded to a few levels (ties in risk), and test follow-up that outlasts part of
the training follow-up. Every metric must equal the reference to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

from wsimm.survival import (
    brier_scores,
    c_index,
    eval_times,
    integrated_brier_score,
    td_auc,
    td_auc_mean,
    uno_c_index,
)

sksurv_metrics = pytest.importorskip("sksurv.metrics")
from sksurv.util import Surv  # noqa: E402

TOL = 1e-6


def _draw(seed: int, *, tied: bool, n_train: int = 160, n_test: int = 70):
    rng = np.random.default_rng(seed)

    def part(n):
        risk = rng.standard_normal(n)
        t_ev = rng.exponential(40 * np.exp(-0.7 * risk))
        t_c = rng.uniform(5, 120, n)
        t = np.minimum(t_ev, t_c)
        e = t_ev <= t_c
        if tied:
            t = np.ceil(t)  # integer months: ties, some of them event vs censored
        return t, e, risk

    tr_t, tr_e, _ = part(n_train)
    te_t, te_e, te_r = part(n_test)
    pred = te_r + 0.8 * rng.standard_normal(n_test)
    if tied:
        pred = np.round(pred, 1)  # ties in risk
    return tr_t, tr_e, te_t, te_e, pred


def _surv_prob(pred, times):
    """A proper survival curve per patient (exponential in the risk)."""
    return np.exp(-np.outer(np.exp(pred), times) / 60.0)


CASES = [(s, tied) for tied in (True, False) for s in range(10)]


@pytest.mark.parametrize(("seed", "tied"), CASES)
def test_metrics_equal_scikit_survival(seed, tied):
    tr_t, tr_e, te_t, te_e, pred = _draw(seed, tied=tied)
    y_tr, y_te = Surv.from_arrays(tr_e, tr_t), Surv.from_arrays(te_e, te_t)
    ref_h = sksurv_metrics.concordance_index_censored(te_e, te_t, pred)[0]
    assert abs(c_index(te_t, te_e, pred) - ref_h) <= TOL

    tau = float(np.quantile(tr_t, 0.8))
    keep = te_t <= tr_t.max()  # sksurv raises past the training follow-up; keep it defined
    ref_u = sksurv_metrics.concordance_index_ipcw(y_tr, y_te[keep], pred[keep], tau=tau)[0]
    ours_u = uno_c_index(te_t[keep], te_e[keep], pred[keep], tr_t, tr_e, tau=tau)
    assert abs(ours_u - ref_u) <= TOL

    times = eval_times(tr_t, tr_e, te_t[keep])
    ref_auc, ref_mean = sksurv_metrics.cumulative_dynamic_auc(y_tr, y_te[keep], pred[keep], times)
    aucs = td_auc(te_t[keep], te_e[keep], pred[keep], times, tr_t, tr_e)
    np.testing.assert_allclose(aucs, ref_auc, atol=TOL, rtol=0)
    assert abs(td_auc_mean(te_t[keep], te_e[keep], aucs, times) - ref_mean) <= TOL

    surv = _surv_prob(pred[keep], times)
    _, ref_bs = sksurv_metrics.brier_score(y_tr, y_te[keep], surv, times)
    ours_bs = brier_scores(te_t[keep], te_e[keep], surv, times, tr_t, tr_e)
    np.testing.assert_allclose(ours_bs, ref_bs, atol=TOL, rtol=0)
    ref_ibs = sksurv_metrics.integrated_brier_score(y_tr, y_te[keep], surv, times)
    ours_ibs = integrated_brier_score(te_t[keep], te_e[keep], surv, times, tr_t, tr_e)
    assert abs(ours_ibs - ref_ibs) <= TOL


@pytest.mark.parametrize("seed", range(5))
def test_harrell_equals_lifelines_on_ties(seed):
    lu = pytest.importorskip("lifelines.utils")
    _, _, t, e, pred = _draw(seed, tied=True, n_test=200)
    assert abs(c_index(t, e, pred) - lu.concordance_index(t, -pred, e)) <= TOL


def test_event_and_censoring_at_the_same_time_are_comparable():
    # patient 0 dies at 5, patient 1 is censored at 5: comparable (the death comes first)
    t = np.array([5.0, 5.0, 9.0])
    e = np.array([1, 0, 1])
    assert c_index(t, e, [3.0, 1.0, 0.0]) == 1.0
    assert c_index(t, e, [1.0, 3.0, 0.0]) == pytest.approx(0.5)  # one of two pairs discordant
    # two deaths at the same time are not comparable with each other
    assert np.isnan(c_index([5.0, 5.0], [1, 1], [1.0, 2.0]))


def test_reference_checks_catch_wrong_weights():
    """The comparison above fails on the breakages a metric is most likely to suffer: 1/G
    instead of 1/G^2, no tau truncation, no IPCW at all, a left-limit G, a plain mean over
    times. Here each is computed by hand and must differ from scikit-survival by far more than
    the tolerance, so the tests above can tell them apart."""
    from wsimm.survival._metrics import _concordance, _g_at, censoring_survival

    tr_t, tr_e, te_t, te_e, pred = _draw(3, tied=True)
    keep = te_t <= tr_t.max()
    t, e, r = te_t[keep], te_e[keep].astype(bool), pred[keep]
    y_tr, y_te = Surv.from_arrays(tr_e, tr_t), Surv.from_arrays(e, t)
    tau = float(np.quantile(tr_t, 0.6))
    ref = sksurv_metrics.concordance_index_ipcw(y_tr, y_te, r, tau=tau)[0]
    g = _g_at(tr_t, tr_e, t)
    ok = e & (t < tau)
    broken = {
        "1/G": _concordance(t, e, r, np.where(ok, 1 / g, 0.0), 1e-8),
        "no tau": _concordance(t, e, r, np.where(e, 1 / g**2, 0.0), 1e-8),
        "no IPCW": _concordance(t, e, r, ok.astype(float), 1e-8),
    }
    gt, gs = censoring_survival(tr_t, tr_e)
    i = np.searchsorted(gt, t, side="left") - 1
    g_left = np.where(i >= 0, gs[np.clip(i, 0, None)], 1.0)
    broken["G(t-)"] = _concordance(t, e, r, np.where(ok, 1 / g_left**2, 0.0), 1e-8)
    for name, value in broken.items():
        assert abs(value - ref) > 10 * TOL, name
    times = eval_times(tr_t, tr_e, t)
    _, ref_mean = sksurv_metrics.cumulative_dynamic_auc(y_tr, y_te, r, times)
    plain = float(np.mean(td_auc(t, e, r, times, tr_t, tr_e)))
    assert abs(plain - ref_mean) > 10 * TOL
    surv = _surv_prob(r, times)
    bs = brier_scores(t, e, surv, times, tr_t, tr_e)
    ref_ibs = sksurv_metrics.integrated_brier_score(y_tr, y_te, surv, times)
    assert abs(float(np.mean(bs)) - ref_ibs) > 10 * TOL
