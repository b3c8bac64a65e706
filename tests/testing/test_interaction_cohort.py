"""The interaction cohorts (issue 25): the risk is a pathway x tile-type interaction that no
additive model of the pathway, the tile-type fractions and age captures, in both independently
written families; the truth per tile is right; missing modalities and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from wsimm.errors import ConfigError
from wsimm.testing import make_cohort, make_interaction_cohort


def _r2(X: np.ndarray, y: np.ndarray) -> float:
    X = np.c_[X, np.ones(len(y))]
    res = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    return 1 - res.var() / y.var()


@pytest.mark.parametrize(("family", "additive_max"), [("types", 0.7), ("manifold", 0.15)])
def test_risk_is_an_interaction(family, additive_max):
    c = make_interaction_cohort(300, family=family, seed=1)
    p = c.patients
    add = np.c_[p.pathway, p.frac_a, p.frac_b, p.age_z]
    # the best additive model of the truths themselves leaves much of the risk unexplained ...
    assert _r2(add, p.risk.to_numpy()) < additive_max
    # ... which the pathway x fraction products explain
    g = 1 / (1 + np.exp(-3 * p.pathway))
    inter = np.c_[add, p.pathway * p.frac_a, p.pathway * p.frac_b, g * p.frac_a, g * p.frac_b]
    assert _r2(inter, p.risk.to_numpy()) > 0.99


@pytest.mark.parametrize("family", ["types", "manifold"])
def test_tile_truth_and_tables(family):
    c = make_interaction_cohort(60, family=family, seed=0, feature_dim=16, p_no_omics=0.2)
    p = c.patients.set_index("patient_id")
    for sid, kinds in c.tile_type.items():
        pid = sid.split("-")[0]
        assert c.bags[sid].shape == (len(kinds), 16)
        assert np.isclose(p.loc[pid, "frac_a"], np.mean(kinds == 1))
        assert np.isclose(p.loc[pid, "frac_b"], np.mean(kinds == 2))
        np.testing.assert_array_equal(c.tile_signal[sid], kinds > 0)
    # type A and B tiles are told apart from the others by their features (pooled over slides)
    x = np.concatenate([c.bags[s].astype(np.float32) for s in c.tile_type])
    k = np.concatenate(list(c.tile_type.values()))
    for t in (1, 2):
        mu_t, mu_o = x[k == t].mean(0), x[k == 0].mean(0)
        assert np.linalg.norm(mu_t - mu_o) > 1.0
    # the pathway group's genes follow the pathway; the decoy's do not
    genes = [f"{g}_rnaseq" for g in c.gene_groups["PATHWAY"]]
    corr = [abs(np.corrcoef(c.omics[g], p.loc[c.omics.index, "pathway"])[0, 1]) for g in genes]
    assert np.mean(corr) > 0.35
    decoy = [f"{g}_rnaseq" for g in c.gene_groups["DECOY"]]
    assert (
        np.mean(
            [abs(np.corrcoef(c.omics[g], p.loc[c.omics.index, "pathway"])[0, 1]) for g in decoy]
        )
        < 0.2
    )
    assert 0 < (~p["has_omics"]).sum() < 30 and len(c.omics) == p["has_omics"].sum()
    assert set(c.labels["patient_id"]) == set(p.index)


def test_determinism_delegation_and_errors():
    a = make_interaction_cohort(30, family="manifold", seed=4, feature_dim=8)
    b = make_cohort(
        30, interaction="manifold", seed=4, feature_dim=8, tiles_per_slide=(200, 400),
        p_no_slide=0.0, p_no_omics=0.0, censoring=0.3,
    )  # fmt: skip
    assert a.patients.equals(b.patients)
    for sid in a.bags:
        np.testing.assert_array_equal(a.bags[sid], b.bags[sid])
    other = make_interaction_cohort(30, family="types", seed=4, feature_dim=8)
    assert not np.allclose(a.patients["risk"], other.patients["risk"])
    with pytest.raises(ConfigError, match="family"):
        make_interaction_cohort(30, family="nope")
