"""Heatmaps of fusion runs: the slide model's attention inside the fusion network and each
tile's contribution to the patient's risk through the whole graph."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

import wsimm
from wsimm.errors import ConfigError, WsimmWarning
from wsimm.heatmap import export, make_heatmaps, tile_scores
from wsimm.train import train


def _train_fusion(co, d, **fusion_kwargs):
    """A 3-fold, 3-epoch survival graph fusion run of ``co`` in ``d / "run"``."""
    paths = co.save(d)
    wsimm.bags_to_store(co.bags, d / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        res = train(store=str(d / "s.zarr"), labels=str(paths["labels"]), task="survival",
                    omics=str(paths["omics"]), clinical=str(paths["clinical"]),
                    gene_groups=str(paths["gene_groups"]), fusion="graph", folds=3, epochs=3,
                    survival_loss="cox", out=str(d / "run"), baselines="none", quiet=True,
                    fusion_kwargs={"hidden": 16, "heads": 2, **fusion_kwargs})  # fmt: skip
    assert not res.failed
    return co, d


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory):
    co = wsimm.make_cohort(36, seed=13, tiles_per_slide=(20, 40), feature_dim=16,
                           p_no_slide=0.1)  # fmt: skip
    return _train_fusion(co, tmp_path_factory.mktemp("hm_fusion"))


def test_fusion_heatmap_scores_match_the_runs_out_of_fold_prediction(fusion_run):
    co, d = fusion_run
    preds = pd.read_csv(d / "run" / "predictions.csv")
    single = co.labels.groupby("patient_id")["slide_id"].nunique()
    pid = next(p for p in preds["patient_id"] if single.get(p) == 1)
    sid = co.labels.loc[co.labels.patient_id == pid, "slide_id"].iloc[0]
    ts = tile_scores(d / "run", d / "s.zarr", sid)
    row = preds[preds.patient_id == pid].iloc[0]
    assert ts.folds == [int(row["fold"])] and ts.patient_id == pid
    # the heatmap's model, graph and tiles are the run's: same risk as predictions.csv
    assert ts.prediction["risk"] == pytest.approx(float(row["risk"]), abs=1e-4)
    assert set(ts.scores) == {"attention", "contribution"} and ts.primary == "contribution"
    assert len(ts) == len(co.bags[sid])
    assert ts.scores["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    c = ts.scores["contribution"]
    assert np.isfinite(c).all() and c.std() > 0
    assert "graph fusion" in ts.title()


def test_fusion_heatmap_files_from_the_cli_path(fusion_run):
    co, d = fusion_run
    sids = sorted(co.bags)[:2]
    rep = make_heatmaps(d / "run", d / "s.zarr", d / "hm", slides=sids, formats="geojson,tiff",
                        quiet=True)  # fmt: skip
    assert not rep.failed, rep.failed
    doc = json.loads((d / "hm" / f"{sids[0]}.geojson").read_text())
    meas = doc["features"][0]["properties"]["measurements"]
    assert {"attention", "contribution", "contribution percentile"} <= set(meas)
    ts = tile_scores(d / "run", d / "s.zarr", sids[1])
    assert export(ts, d / "hm2", "tiff")["tiff"].is_file()
    # a run without slide x omics terms has no cross score, and says why in one line
    with pytest.raises(ConfigError, match=r"no score 'cross' .*no slide x omics terms.*choose"):
        export(ts, d / "hm3", "png", score="cross")


@pytest.fixture(scope="module")
def coattention_run(tmp_path_factory):
    co = wsimm.make_cohort(36, interaction="types", seed=2, tiles_per_slide=(20, 40),
                           feature_dim=16, p_no_slide=0.1, p_no_omics=0.1)  # fmt: skip
    d = tmp_path_factory.mktemp("hm_coattn")
    return _train_fusion(co, d, coattention=True, contrastive=0.2)


def test_coattention_heatmaps_are_the_runs_explanations(coattention_run):
    """One heatmap score per gene group of the patient (where on the slide it looks), equal to
    the attention of the tiles the run's explanations.json lists; the risk is the run's."""
    co, d = coattention_run
    preds = pd.read_csv(d / "run" / "predictions.csv")
    has_omics = set(co.omics.index)
    pid = next(p for p in preds["patient_id"] if p in has_omics and f"{p}-S1" in co.bags)
    sid = f"{pid}-S1"
    row = preds[preds.patient_id == pid].iloc[0]
    ts = tile_scores(d / "run", d / "s.zarr", sid)
    assert ts.prediction["risk"] == pytest.approx(float(row["risk"]), abs=1e-4)
    expl = json.loads((d / "run" / f"fold_{int(row['fold'])}" / "explanations.json").read_text())
    groups = expl[pid]["coattention"]
    assert {f"{g}|{a}" for g in co.gene_groups for a in ("rnaseq", "cnv", "mut")} <= set(groups)
    for key, e in groups.items():
        name = "coattention_" + key.replace("|", "_")
        v = ts.scores[name]
        assert len(v) == len(co.bags[sid]) and ((v >= 0) & (v <= 1)).all()
        assert e["mean"] == pytest.approx(float(v.mean()), abs=1e-4)
        for slide, i, a in e["top_tiles"]:
            assert slide == sid and v[i] == pytest.approx(a, abs=1e-4)
        assert e["top_tiles"][0][2] == pytest.approx(float(v.max()), abs=1e-4)
    assert np.isfinite(ts.scores["contribution"]).all() and ts.scores["contribution"].std() > 0
    # a patient without omics has no gene group to look with
    no_omics = next(p for p in preds["patient_id"] if p not in has_omics and f"{p}-S1" in co.bags)
    ts2 = tile_scores(d / "run", d / "s.zarr", f"{no_omics}-S1")
    assert not any(k.startswith("coattention_") for k in ts2.scores)


def test_cross_heatmap_is_each_tiles_part_of_the_wide_slide_terms(tmp_path):
    """With ``cross`` (here on tile prototypes), the ``cross`` score of a tile is its part of
    the wide part's slide and slide x omics terms: over a one-slide patient's tiles it
    averages to the terms explanations.json gives, and on the interaction cohort it tells
    the pathway's tile types apart."""
    from wsimm.testing import make_interaction_cohort

    co = make_interaction_cohort(48, family="types", seed=3, tiles_per_slide=(30, 50),
                                 feature_dim=16, p_no_omics=0.15)  # fmt: skip
    co, d = _train_fusion(co, tmp_path, cross=True, cross_prototypes=8)
    preds = pd.read_csv(d / "run" / "predictions.csv")
    has_omics = set(co.omics.index)
    checked, gaps = 0, []
    path = co.patients.set_index("patient_id")["pathway"]
    for pid in preds["patient_id"][:12]:
        row = preds[preds.patient_id == pid].iloc[0]
        ts = tile_scores(d / "run", d / "s.zarr", f"{pid}-S1")
        fold = int(row["fold"])
        terms = json.loads((d / "run" / f"fold_{fold}" / "explanations.json").read_text())[pid][
            "linear_terms"
        ]
        v = ts.scores["cross"]
        assert len(v) == len(co.bags[f"{pid}-S1"]) and np.isfinite(v).all()
        want = terms["slide"][0] + (terms["cross"][0] if pid in has_omics else 0.0)
        assert float(v.mean()) == pytest.approx(want, abs=1e-4)
        assert ts.prediction["risk"] == pytest.approx(float(row["risk"]), abs=1e-4)
        kind = co.tile_type[f"{pid}-S1"]
        if pid in has_omics and (kind == 1).any() and (kind == 2).any():
            gaps.append((path[pid], float(v[kind == 1].mean() - v[kind == 2].mean())))
        checked += 1
    assert checked == 12 and (set(preds["patient_id"][:12]) - has_omics)  # both kinds seen
    # a high pathway makes type-A tiles (a low one type-B tiles) the ones that count
    p, g = np.array(gaps).T
    print(f"corr(pathway, type A - type B tile score) = {np.corrcoef(p, g)[0, 1]:.2f}")
    assert len(gaps) >= 6 and np.corrcoef(p, g)[0, 1] > 0.5
