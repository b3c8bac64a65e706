"""Survival metrics against lifelines and scikit-learn, losses, and time bins."""

from __future__ import annotations

import numpy as np
import pytest

from wsimm.survival import (
    TimeBins,
    c_index,
    eval_times,
    integrated_brier_score,
    kaplan_meier,
    km_plot,
    logrank_test,
    td_auc,
    uno_c_index,
)
from wsimm.testing import make_mil_cohort


@pytest.fixture(scope="module")
def outcomes():
    p = make_mil_cohort(300, task="survival", seed=3, tiles_per_slide=(4, 5)).patients
    return p["time"].to_numpy(), p["event"].to_numpy(), p["risk"].to_numpy()


def test_harrell_c_index_matches_lifelines(outcomes):
    lu = pytest.importorskip("lifelines.utils")
    t, e, r = outcomes
    assert c_index(t, e, r) == pytest.approx(lu.concordance_index(t, -r, e), abs=1e-9)
    assert c_index(t, e, -r) == pytest.approx(1 - c_index(t, e, r), abs=1e-9)


def test_kaplan_meier_and_logrank_match_lifelines(outcomes):
    lifelines = pytest.importorskip("lifelines")
    from lifelines.statistics import multivariate_logrank_test

    t, e, r = outcomes
    _, s = kaplan_meier(t, e)
    ref = lifelines.KaplanMeierFitter().fit(t, e).survival_function_.to_numpy()[1:, 0]
    np.testing.assert_allclose(s, ref, atol=1e-12)
    g = (r > np.median(r)).astype(int)
    assert logrank_test(t, e, g)[1] == pytest.approx(
        multivariate_logrank_test(t, g, e).p_value, rel=1e-6
    )


def test_uno_and_td_auc_reward_the_true_risk(outcomes):
    t, e, r = outcomes
    noise = np.random.default_rng(0).standard_normal(len(r))
    assert uno_c_index(t, e, r, t, e) > 0.7 > uno_c_index(t, e, noise, t, e)
    times = eval_times(t, e, t)
    assert np.all(td_auc(t, e, r, times, t, e) > 0.7)
    assert abs(np.mean(td_auc(t, e, noise, times, t, e)) - 0.5) < 0.1


def test_integrated_brier_score_perfect_vs_uninformative(outcomes):
    t, e, _ = outcomes
    times = eval_times(t, e, t)
    # the KM curve for everyone is the classic reference (IBS about 0.15-0.25); a model that
    # says "certain death at time 0" must be worse
    ut, s = kaplan_meier(t, e)
    km = np.tile(np.interp(times, ut, s), (len(t), 1))
    ibs_km = integrated_brier_score(t, e, km, times, t, e)
    assert 0.05 < ibs_km < 0.3
    assert integrated_brier_score(t, e, np.zeros_like(km), times, t, e) > ibs_km


def test_time_bins_use_event_times_only():
    t = np.array([1.0, 2, 3, 4, 100, 200])
    e = np.array([1, 1, 1, 1, 0, 0])
    bins = TimeBins.fit(t, e, n_bins=2)
    assert bins.edges[1] == pytest.approx(2.5)  # median of the event times, not of all times
    assert bins.assign(np.array([0.5, 2.5, 1000])).tolist() == [0, 1, 1]
    assert TimeBins.from_dict(bins.to_dict()) == bins


def test_nll_and_cox_losses_prefer_the_right_order():
    torch = pytest.importorskip("torch")
    from wsimm.survival._losses import cox_loss, nll_loss

    time = torch.tensor([1.0, 2.0, 3.0, 4.0])
    event = torch.tensor([1, 1, 0, 1])
    good = torch.tensor([3.0, 2.0, 1.0, 0.0])  # earlier event = higher risk
    assert cox_loss(good, time, event) < cox_loss(-good, time, event)
    bins = torch.tensor([0, 1, 2, 3])
    early = torch.tensor([[3.0, 0, 0, 0], [-3, 3, 0, 0], [-3, -3, -3, 0], [-3, -3, -3, 3]])
    assert nll_loss(early, bins, event) < nll_loss(-early, bins, event)
    assert cox_loss(good, time, torch.zeros(4)) == 0


def test_km_plot_writes_a_png_with_the_pvalue(outcomes, tmp_path):
    pytest.importorskip("matplotlib")
    t, e, r = outcomes
    p = km_plot(t, e, tmp_path / "km.png", risk=r)
    assert p < 1e-6
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_breslow_baseline_hazard_holds_for_far_apart_risks():
    """The Breslow estimate d_u / sum over the risk set of exp(risk): the textbook formula
    for ordinary risks, and no underflow (a division by zero) when a barely trained network
    puts risks hundreds apart."""
    from wsimm.train._fold import breslow

    rng = np.random.default_rng(0)
    t, e, r = rng.uniform(1, 10, 60), rng.integers(0, 2, 60), rng.normal(0, 1, 60)
    ut, h = breslow(r, t, e)
    want = np.cumsum([e[t == u].sum() / np.exp(r[t >= u]).sum() for u in ut])
    np.testing.assert_allclose(h, want, rtol=1e-10)
    assert np.array_equal(ut, np.unique(t[e == 1]))
    _, far = breslow(r * 1000, t, e)  # warnings are errors in this suite
    assert not np.isnan(far).any() and (np.diff(far) >= 0).all()
