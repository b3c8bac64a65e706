"""The two synthetic MIL families (``make_mil_cohort``'s harder knobs, ``make_latent_cohort``):
what each knob promises, checked on the bags it writes."""

from __future__ import annotations

import numpy as np
import pytest

from wsimm.errors import ConfigError
from wsimm.testing import grid_coords, make_latent_cohort, make_mil_cohort


def _witness_share(c):
    pos = c.labels.loc[c.labels["grade"] == 1, "slide_id"]
    return np.mean([c.tile_signal[s].mean() for s in pos])


def test_default_cohort_is_unchanged_by_the_new_knobs():
    a = make_mil_cohort(12, seed=3)
    b = make_mil_cohort(12, seed=3, background="gaussian", label_noise=0.0)
    assert all(np.array_equal(a.bags[s], b.bags[s]) for s in a.bags)


def test_cluster_background_makes_slide_means_differ_more_than_the_signal():
    c = make_mil_cohort(40, seed=0, background="clusters", slide_nuisance=0.0,
                        signal_strength=2.5, signal_fraction=0.05)  # fmt: skip
    means = np.stack([c.bags[s].astype(np.float32).mean(0) for s in c.labels["slide_id"]])
    between = np.linalg.norm(means - means.mean(0), axis=1).mean()
    assert between > 2.5 * 0.05 * 3  # slide mixtures move the mean far more than 5% witnesses
    assert 0.03 < _witness_share(c) < 0.07


def test_cluster_layout_puts_witnesses_on_adjacent_tiles():
    c = make_mil_cohort(20, seed=1, background="clusters", signal_layout="cluster",
                        signal_fraction=0.05)  # fmt: skip
    for sid in c.labels.loc[c.labels["grade"] == 1, "slide_id"]:
        sig = c.tile_signal[sid]
        xy = grid_coords(len(sig))[sig]
        # one compact patch: its extent is about the side of a disc of that many tiles
        span = np.ptp(xy, axis=0).max()
        assert span <= 2 * np.sqrt(sig.sum()) + 2, (sid, span, sig.sum())


def test_label_noise_and_imbalance():
    c = make_mil_cohort(200, seed=2, label_noise=0.1, positive_fraction=0.25)
    p = c.patients
    assert (p["grade_true"] == 1).sum() == 50
    assert (p["grade"] != p["grade_true"]).sum() == 20
    # tiles follow the true grade: only truly positive patients' slides carry witnesses
    carries = c.labels.groupby("patient_id")["slide_id"].apply(
        lambda s: any(c.tile_signal[x].any() for x in s)
    )
    assert (carries.loc[p["patient_id"]].to_numpy() == (p["grade_true"] == 1).to_numpy()).all()


def test_latent_family_sizes_fractions_and_determinism():
    c = make_latent_cohort(60, seed=4, median_tiles=400, max_tiles=1500)
    sizes = np.array([len(b) for b in c.bags.values()])
    assert sizes.min() >= 32 and sizes.max() <= 1500 and sizes.std() > 100  # heavy tail
    assert 0.03 < _witness_share(c) < 0.07
    neg = c.labels.loc[c.labels["grade"] == 0, "slide_id"]
    assert not any(c.tile_signal[s].any() for s in neg)
    d = make_latent_cohort(60, seed=4, median_tiles=400, max_tiles=1500)
    assert all(np.array_equal(c.bags[s], d.bags[s]) for s in c.bags)
    e = make_latent_cohort(60, seed=5, median_tiles=400, max_tiles=1500)
    assert not np.array_equal(c.bags[c.labels["slide_id"][0]], e.bags[e.labels["slide_id"][0]])


def test_latent_witnesses_are_not_a_shift_along_one_feature_direction():
    """The tumour phenotype goes through a nonlinear renderer: the witness-minus-normal
    difference is not explained by one direction for every slide (stain gain varies)."""
    c = make_latent_cohort(40, seed=0, signal_strength=2.5)
    diffs = []
    for sid in c.labels.loc[c.labels["grade"] == 1, "slide_id"]:
        x, s = c.bags[sid].astype(np.float32), c.tile_signal[sid]
        diffs.append(x[s].mean(0) - x[~s].mean(0))
    d = np.stack(diffs)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    sv = np.linalg.svd(d, compute_uv=False)
    assert sv[0] ** 2 / (sv**2).sum() < 0.95


def test_latent_survival_risk_drives_times():
    from wsimm.survival import c_index

    c = make_latent_cohort(300, task="survival", seed=1, median_tiles=100, max_tiles=300)
    p = c.patients
    assert 0.5 < p["event"].mean() < 0.8  # censoring=0.3: 30-40% censored
    assert c_index(p["time"], p["event"], p["risk"]) > 0.65
    assert all(c.tile_signal[s].any() for s in c.labels["slide_id"])


@pytest.mark.parametrize(
    "kw",
    [{"background": "plaid"}, {"signal_layout": "ring"}, {"label_noise": 0.6},
     {"positive_fraction": 1.0}],
)  # fmt: skip
def test_bad_knobs_are_clear_errors(kw):
    with pytest.raises(ConfigError):
        make_mil_cohort(10, **kw)


def test_witness_oracles_see_what_the_bag_mean_cannot():
    """The references of ``bench_mil.py``: on a sparse latent cohort the bag-mean linear model
    is near chance while an instance classifier shown the witness tiles finds the positives."""
    from wsimm.testing import reference_aucs
    from wsimm.train import make_splits

    c = make_latent_cohort(
        100, seed=3, signal_strength=3.0, signal_fraction=0.05, median_tiles=200, max_tiles=600
    )
    p = c.patients
    splits = make_splits(
        p["patient_id"].tolist(), p["grade"].to_numpy(), folds=3, val_fraction=0.2, seed=0
    )
    ref = {k: np.asarray(v) for k, v in reference_aucs(c, splits).items()}
    assert set(ref) == {"lr_mean", "oracle", "oracle_mlp"}
    assert all(len(v) == 3 for v in ref.values())
    assert ref["lr_mean"].mean() < 0.75, ref
    assert ref["oracle_mlp"].mean() > 0.9 and ref["oracle"].mean() > 0.85, ref
