"""No test patient reaches anything a fusion run fits: slides + omics + clinical, graph fusion
with its wide part, the linear baselines and a network baseline on the same folds.

Three runs on the same splits: the original; one where the fold-0 test patients' outcomes are
shuffled among them; one where their omics, clinical values and tile features are replaced by
noise. Fold 0's network weights (wide part included), fitted preprocessing, training history,
linear-baseline fits and, for the outcome shuffle, every test prediction must be identical.
A copy of the code that fits z-scores, PCA, the wide Cox part or the baselines on all patients
fails here (tried by hand, see docs/stages/fusion.md)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

from safetensors.numpy import load_file

import wsimm
from wsimm.errors import WsimmWarning
from wsimm.train import train

BASELINES = "clinical_cox,clinical_omics_pca_cox,omics_net"


def _run(paths, store, out, *, splits=None, **changed):
    kw = dict(
        store=str(store),
        labels=str(changed.get("labels", paths["labels"])),
        omics=str(changed.get("omics", paths["omics"])),
        clinical=str(changed.get("clinical", paths["clinical"])),
        gene_groups=str(paths["gene_groups"]),
        task="survival",
        fusion="graph",
        folds=3,
        epochs=3,
        seed=4,
        baselines=BASELINES,
        out=str(out),
        # uncertainty weighting too: its scales, bootstrap refits and noise reference; and
        # the wide part's slide terms (the mean-tile PCA, the penalty chosen on validation)
        fusion_kwargs={"hidden": 16, "heads": 2, "uncertainty": 3, "cross": True},
    )
    if splits is not None:
        kw.update(splits=str(splits), folds=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        return train(quiet=True, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("leak")
    co = wsimm.make_cohort(36, seed=21, tiles_per_slide=(20, 30), feature_dim=16)
    paths = co.save(d)
    wsimm.bags_to_store(co.bags, d / "s.zarr")
    a = _run(paths, d / "s.zarr", d / "a")
    splits = pd.read_csv(d / "a" / "splits.csv", dtype={"patient_id": str})
    test0 = sorted(splits.loc[(splits["fold"] == 0) & (splits["set"] == "test"), "patient_id"])
    rng = np.random.default_rng(0)

    # B: the test patients' outcomes shuffled among them (and one made up)
    lab = pd.read_csv(paths["labels"], dtype={"patient_id": str})
    per = lab.drop_duplicates("patient_id").set_index("patient_id")
    perm = dict(zip(test0, rng.permutation(test0), strict=True))
    sel = lab["patient_id"].isin(test0)
    for col in ("time", "event"):
        lab.loc[sel, col] = lab.loc[sel, "patient_id"].map(lambda p, c=col: per.loc[perm[p], c])
    lab.loc[lab["patient_id"] == test0[0], ["time", "event"]] = [0.01, 1]
    lab.to_csv(d / "labels_b.csv", index=False)
    b = _run(paths, d / "s.zarr", d / "b", splits=d / "a" / "splits.csv", labels=d / "labels_b.csv")

    # C: the test patients' omics, clinical values and tiles replaced by noise
    om = pd.read_csv(paths["omics"], dtype={"patient_id": str})
    om_sel = om["patient_id"].isin(test0)
    genes = [c for c in om.columns if c != "patient_id"]
    om.loc[om_sel, genes] = rng.normal(50, 30, (int(om_sel.sum()), len(genes)))
    om.to_csv(d / "omics_c.csv", index=False)
    cl = pd.read_csv(paths["clinical"], dtype={"patient_id": str})
    cl_sel = cl["patient_id"].isin(test0)
    cl.loc[cl_sel, "age"] = rng.integers(0, 120, int(cl_sel.sum()))
    cl.loc[cl_sel, "sex"] = "unknown"
    cl.loc[cl_sel, "stage"] = "IV"
    cl.to_csv(d / "clinical_c.csv", index=False)
    test_slides = set(co.labels.loc[co.labels["patient_id"].isin(test0), "slide_id"].dropna())
    bags = {
        s: (rng.normal(100, 50, v.shape).astype(v.dtype) if s in test_slides else v)
        for s, v in co.bags.items()
    }
    wsimm.bags_to_store(bags, d / "s_c.zarr")
    c = _run(
        paths,
        d / "s_c.zarr",
        d / "c",
        splits=d / "a" / "splits.csv",
        omics=d / "omics_c.csv",
        clinical=d / "clinical_c.csv",
    )
    return a, b, c, test0


def _fold_artefacts(run_dir):
    f = run_dir / "fold_0"
    out = {f"w:{k}": v for k, v in load_file(str(f / "model.safetensors")).items()}
    out["preprocess"] = json.loads((f / "preprocess.json").read_text())
    meta = json.loads((f / "meta.json").read_text())
    keys = ("best_epoch", "bins", "train_risk_median", "uncertainty", "wide_penalizer")
    out["meta"] = {k: meta[k] for k in keys if k in meta}
    out["history"] = pd.read_csv(f / "history.csv")
    for name in BASELINES.split(","):
        p = run_dir / "baselines" / name / "fold_0"
        if (p / "linear.npz").is_file():
            with np.load(p / "linear.npz") as z:
                out.update({f"{name}:{k}": z[k] for k in z.files})
            out[f"{name}:preprocess"] = json.loads((p / "preprocess.json").read_text())
    return out


def _assert_same(x, y):
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], pd.DataFrame):
            pd.testing.assert_frame_equal(x[k], y[k], check_exact=True, obj=k)
        elif isinstance(x[k], np.ndarray):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x[k] == y[k], k


def test_runs_are_complete_and_linear_fits_are_written(runs):
    a, *_ = runs
    assert not a.failed and not any(b["failed"] for b in a.metrics["baselines"].values())
    arte = _fold_artefacts(a.out)
    assert "clinical_omics_pca_cox:pca_components" in arte and "clinical_cox:coef" in arte
    assert any(k.startswith("w:model.wide_omics") for k in arte)  # the graph's wide part is saved
    assert set(arte["meta"]["uncertainty"]["tau2"]) == {"slide", "omics", "clinical"}


def test_test_outcomes_reach_nothing_fitted(runs):
    a, b, _, test0 = runs
    _assert_same(_fold_artefacts(a.out), _fold_artefacts(b.out))
    # every test prediction of fold 0 is the same too, the run's and each baseline's
    pa, pb = (pd.read_csv(r.out / "predictions.csv", dtype={"patient_id": str}) for r in (a, b))
    cols = [
        c
        for c in pa.columns
        if c.startswith(("risk", "weight_", "linear_", "sd_", "uweight_", "time_"))
    ]
    assert {"risk_unweighted", "risk_sd", "time_lo", "uweight_omics"} <= set(cols)
    pairs = [(pa, pb)]
    for n in BASELINES.split(","):
        pairs.append(
            tuple(
                pd.read_csv(r.out / "baselines" / n / "predictions.csv", dtype={"patient_id": str})
                for r in (a, b)
            )
        )
    for p, q in pairs:
        x = p[p["patient_id"].isin(test0)].set_index("patient_id").sort_index()
        y = q[q["patient_id"].isin(test0)].set_index("patient_id").sort_index()
        assert len(x) == len(test0)
        use = [c for c in cols if c in x.columns] or ["risk"]
        pd.testing.assert_frame_equal(x[use], y[use], check_exact=True)


def test_test_inputs_reach_nothing_fitted(runs):
    a, _, c, test0 = runs
    _assert_same(_fold_artefacts(a.out), _fold_artefacts(c.out))
    # ... while the test predictions do follow the replaced inputs
    pa, pc = (pd.read_csv(r.out / "predictions.csv", dtype={"patient_id": str}) for r in (a, c))
    x = pa[pa["patient_id"].isin(test0)].set_index("patient_id").sort_index()["risk"]
    y = pc[pc["patient_id"].isin(test0)].set_index("patient_id").sort_index()["risk"]
    assert not np.allclose(x.to_numpy(), y.to_numpy())
