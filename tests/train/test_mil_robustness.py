"""Issue 22: on cohorts where a linear model on the bag mean already finds the signal, wsimm's
``mean`` and ``abmil`` models find it too, in every fold, with default settings.

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

from wsimm.testing import bags_to_store, make_latent_cohort, make_mil_cohort, reference_aucs
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
