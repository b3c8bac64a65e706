"""Uncertainty-weighted fusion (``fusion_kwargs: {uncertainty: N}``) and the noisy-modality
cohorts it is measured on (issue 25). The numbers (c-index of the affected patients,
coverage over seeds) are benchmarks/bench_uncertainty.py's; here: the cohort's corruption,
what a run writes, the weights following the measurement noise, the coverage being what the
predictions say, and bad switches refused before training."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

import wsimm
from wsimm.errors import ConfigError, WsimmWarning
from wsimm.survival import c_index
from wsimm.train import train


def test_noisy_cohort_corrupts_only_the_marked_patients():
    clean = wsimm.make_cohort(80, seed=3, slides="bags", tiles_per_slide=(10, 20))
    om = wsimm.make_cohort(80, seed=3, slides="bags", tiles_per_slide=(10, 20), noisy="omics")
    sl = wsimm.make_cohort(80, seed=3, slides="bags", tiles_per_slide=(10, 20), noisy="slides")
    for co in (om, sl):  # the outcome and the other modalities are the clean cohort's
        pd.testing.assert_frame_equal(
            co.patients.drop(columns="noisy"), clean.patients.drop(columns="noisy")
        )
        pd.testing.assert_frame_equal(co.clinical, clean.clinical)
        assert 0.15 < co.patients["noisy"].mean() < 0.45
    bad = set(om.patients.loc[om.patients["noisy"], "patient_id"])
    for pid in clean.omics.index:
        same = np.array_equal(om.omics.loc[pid].to_numpy(), clean.omics.loc[pid].to_numpy())
        assert same == (pid not in bad), pid
    # a bad sample is far off in spread, so a run can tell it from the others
    z = (om.omics - om.omics.mean()) / om.omics.std()
    rn = [c for c in z.columns if c.endswith("_rnaseq")]
    ms = (z[rn] ** 2).mean(1)
    assert ms[ms.index.isin(bad)].min() > ms[~ms.index.isin(bad)].max()
    bad_s = set(sl.patients.loc[sl.patients["noisy"], "patient_id"])
    for sid, x in clean.bags.items():
        assert np.array_equal(sl.bags[sid], x) == (sid.split("-")[0] not in bad_s), sid
    with pytest.raises(ConfigError, match="noisy"):
        wsimm.make_cohort(20, noisy="clinical")


def _run(co, d, task, **kw):
    paths = co.save(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        return train(
            **{k: str(paths[k]) for k in ("labels", "omics", "clinical", "gene_groups")},
            task=task,
            fusion="graph",
            survival_loss="cox",
            folds=3,
            epochs=4,
            baselines="none",
            out=str(d / "run"),
            quiet=True,
            **kw,
        )


def test_weights_follow_the_measurement_noise_and_coverage_is_the_predictions(tmp_path):
    co = wsimm.make_cohort(
        150, seed=1, weights=(0.0, 1.0, 1.0), slides=None, noisy="omics", p_noisy=0.3
    )
    res = _run(co, tmp_path, "survival", fusion_kwargs={"uncertainty": 4, "hidden": 16})
    assert not res.failed
    p = pd.read_csv(res.out / "predictions.csv", dtype={"patient_id": str})
    p = p.merge(co.patients[["patient_id", "noisy"]], on="patient_id")
    for m in ("omics", "clinical"):
        assert p[f"uweight_{m}"].between(0, 1).all() and (p[f"sd_{m}"] >= 0).all()
    assert (p["time_lo"] <= p["time_hi"]).all() and (p["risk_sd"] > 0).all()
    # a badly measured sample's omics are trusted less than the others'
    w = p.groupby("noisy")["uweight_omics"].mean()
    assert w[True] < 0.8 * w[False], w
    for r in res.metrics["folds"]:
        f = p[p["fold"] == r["fold"]]
        assert r["c_index"] == pytest.approx(c_index(f["time"], f["event"], f["risk"]))
        un = c_index(f["time"], f["event"], f["risk_unweighted"])
        assert r["c_index_unweighted"] == pytest.approx(un)
        assert 0 <= r["interval_coverage"] <= 1 and r["interval_level"] == 0.8
        # every event inside its interval counts, every event outside does not
        ev = f[f["event"] == 1]
        inside = ((ev["time"] >= ev["time_lo"]) & (ev["time"] < ev["time_hi"])).mean()
        assert inside > 0


def test_grading_sets_cover_as_reported(tmp_path):
    co = wsimm.make_cohort(120, seed=2, slides=None, noisy="omics")
    res = _run(co, tmp_path, "grade", fusion_kwargs={"uncertainty": 3, "interval": 0.9})
    assert not res.failed
    p = pd.read_csv(res.out / "predictions.csv", dtype={"patient_id": str})
    for r in res.metrics["folds"]:
        f = p[p["fold"] == r["fold"]]
        held = [str(y) in s.split("|") for y, s in zip(f["label"], f["pred_set"], strict=True)]
        assert r["interval_coverage"] == pytest.approx(np.mean(held))
        assert r["interval_level"] == 0.9
        probs = f[[c for c in f.columns if c.startswith("prob_") and "unweighted" not in c]]
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
        # the probability each set holds (of the passes' averaged probabilities) reaches the
        # level; its mean is what calibrated sets would cover
        assert ((f["set_mass"] >= 0.9 - 1e-9) & (f["set_mass"] <= 1 + 1e-9)).all()
        assert r["interval_mass"] == pytest.approx(f["set_mass"].mean())
    assert (p["set_size"] >= 1).all() and (p["set_size"] <= 3).all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"uncertainty": 1}, "at least 2"),
        ({"uncertainty": "often"}, "number of passes"),
        ({"uncertainty": True, "interval": 1.2}, "interval"),
    ],
)
def test_bad_switches_are_refused_before_training(tmp_path, kw, match):
    co = wsimm.make_cohort(30, seed=0, slides=None)
    with pytest.raises(ConfigError, match=match):
        _run(co, tmp_path, "survival", fusion_kwargs=kw)
    assert not (tmp_path / "run" / "fold_0").exists()
