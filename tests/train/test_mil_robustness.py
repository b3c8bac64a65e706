"""Issue 22: on cohorts where a linear model on the bag mean already finds the signal, wsimm's
``mean`` and ``abmil`` models find it too, in every fold, with default settings; where the
witnesses are too sparse for the bag mean but an instance classifier shown them finds the
positives, ``abmil`` finds them and attends to the witnesses.

Two independently written generator families, neither the easy default of
``make_mil_cohort``: the issue's cohort (240 patients, 300-1,500 tiles, a per-slide mixture of
ten tissue clusters, 5% of the tiles of positive slides shifted by 2.5) and the latent-tissue
family (tiles rendered through a random nonlinear map, per-slide stain gain, log-normal bag
sizes). The logistic-regression reference runs on the same folds in the same test, so the
cohort is shown to be one where it reaches 0.95 before wsimm is held to it. Before
``BagNorm`` these runs kept epoch 0 in several folds (AUC 0.39-0.61).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from wsimm.testing import (
    bags_to_store,
    make_latent_cohort,
    make_mil_cohort,
    patient_bags,
    reference_aucs,
    top_k_witness_share,
)
from wsimm.train import train

pytestmark = pytest.mark.slow

COHORTS = {
    "clusters": lambda: make_mil_cohort(
        240,
        seed=0,
        background="clusters",
        slide_nuisance=0.0,
        tiles_per_slide=(300, 1500),
        signal_strength=2.5,
        signal_fraction=0.05,
    ),
    "latent": lambda: make_latent_cohort(
        240, seed=0, signal_strength=4.0, signal_fraction=0.2, median_tiles=500
    ),
}


@pytest.fixture(scope="module", params=sorted(COHORTS))
def cohort(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"mil_{request.param}")
    c = COHORTS[request.param]()
    bags_to_store(c.bags, d / "s.zarr")
    c.labels.to_csv(d / "labels.csv", index=False)
    return c, d


@pytest.mark.parametrize("model", ["mean", "abmil"])
def test_mil_finds_what_the_bag_mean_linear_model_finds(cohort, model):
    c, d = cohort
    res = train(
        store=str(d / "s.zarr"), labels=str(d / "labels.csv"), task="grade", model=model,
        out=str(d / f"run_{model}"), quiet=True,
    )  # fmt: skip
    splits = pd.read_csv(d / f"run_{model}" / "splits.csv")
    ref = np.asarray(reference_aucs(c, splits, oracle=False)["lr_mean"])
    assert ref.mean() >= 0.95, f"the cohort is harder than this test means: LR {ref}"
    aucs = np.asarray([f["auc"] for f in res.metrics["folds"]])
    epochs = [f["best_epoch"] for f in res.metrics["folds"]]
    assert len(res.predictions) == 240 and not res.failed
    assert aucs.mean() >= 0.95 and aucs.min() >= 0.90, (aucs, epochs, ref)


def test_abmil_finds_witnesses_too_sparse_for_the_bag_mean(tmp_path):
    """The second bar: LR on bag means <= 0.75, the instance oracle >= 0.99 (both checked on
    the same folds), ABMIL >= 0.90 mean AUC with its 10 most attended tiles mostly witnesses."""
    from wsimm.train import BagSource, load_run

    c = make_latent_cohort(240, seed=0, signal_strength=2.5, signal_fraction=0.05, median_tiles=500)
    bags_to_store(c.bags, tmp_path / "s.zarr")
    c.labels.to_csv(tmp_path / "labels.csv", index=False)
    res = train(
        store=str(tmp_path / "s.zarr"), labels=str(tmp_path / "labels.csv"), task="grade",
        model="abmil", out=str(tmp_path / "run"), quiet=True,
    )  # fmt: skip
    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    ref = {k: np.asarray(v) for k, v in reference_aucs(c, splits).items()}
    assert ref["lr_mean"].mean() <= 0.75, f"the bag mean sees this cohort: {ref}"
    assert max(ref["oracle"].mean(), ref["oracle_mlp"].mean()) >= 0.99, ref
    aucs = np.asarray([f["auc"] for f in res.metrics["folds"]])
    assert len(res.predictions) == 240 and not res.failed
    assert aucs.mean() >= 0.90, (aucs, [f["best_epoch"] for f in res.metrics["folds"]], ref)

    slides = {p: g["slide_id"].tolist() for p, g in c.labels.groupby("patient_id")}
    source = BagSource(str(tmp_path / "s.zarr"), slides)
    grade = c.patients.set_index("patient_id")["grade"]
    attention = {}
    for fm in load_run(tmp_path / "run").folds:
        test = splits[(splits["fold"] == fm.meta["fold"]) & (splits["set"] == "test")]
        pos = [p for p in test["patient_id"] if grade.loc[p] == 1]
        attention.update(zip(pos, fm.outputs(source, pos, attention=True)[1], strict=True))
    assert len(attention) == int((grade == 1).sum())
    witness = {p: w for p, (_, w) in patient_bags(c).items()}
    share = top_k_witness_share(attention, witness)
    assert share > 0.5, f"top-10 attended tiles {share:.0%} witnesses"
