"""The graph fusion's ``cross`` wide part on cohorts whose risk is a slide x omics interaction
(:func:`wsimm.testing.make_interaction_cohort`, both independently written families): a model
of pooled slide features plus omics cannot see it; the slide x omics crosses can. Each
family's run is scored on patient-level folds, its penalty chosen on validation patients."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

import wsimm
from wsimm.errors import DataError, WsimmWarning
from wsimm.testing import make_interaction_cohort
from wsimm.train import train


@pytest.mark.parametrize("protos", [0, 16], ids=["mean_tile", "prototypes"])
@pytest.mark.parametrize("family", ["types", "manifold"])
def test_cross_terms_see_the_interaction(family, protos, tmp_path):
    co = make_interaction_cohort(200, family=family, seed=1, tiles_per_slide=(80, 160))
    paths = co.save(tmp_path)
    wsimm.bags_to_store(co.bags, tmp_path / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        res = train(
            store=str(tmp_path / "s.zarr"),
            labels=str(paths["labels"]),
            omics=str(paths["omics"]),
            clinical=str(paths["clinical"]),
            gene_groups=str(paths["gene_groups"]),
            task="survival",
            fusion="graph",
            survival_loss="cox",
            folds=3,
            epochs=8,
            seed=1,
            fusion_kwargs={"cross": True, "cross_prototypes": protos, "hidden": 32},
            baselines="clinical_omics_pca_cox,clinical_omics_slide_cross_cox",
            out=str(tmp_path / "run"),
            quiet=True,
            threads=1,
        )
    m = res.metrics
    graph = m["mean"]["c_index"]
    pca = m["baselines"]["clinical_omics_pca_cox"]["mean"]["c_index"]
    wide = m["baselines"]["clinical_omics_slide_cross_cox"]["mean"]["c_index"]
    print(f"{family} ({protos} prototypes): graph +cross {graph:.3f}, its wide part alone "
          f"{wide:.3f}, PCA Cox {pca:.3f}")  # fmt: skip
    # the interaction is what the crosses add: clinical + omics alone stay far below
    assert wide >= pca + 0.05
    assert graph >= pca + 0.05
    # every fold chose a penalty on its validation patients, and the patients' scores exist
    pens = [f.get("wide_penalizer") for f in _metas(res.out)]
    assert all(p is not None for p in pens)
    assert np.isfinite(res.predictions["risk"]).all()
    # a saved fold rebuilds its slide and cross terms (fixed-size buffers from the spec)
    from wsimm.train._fusion import load_fusion_fold

    net = load_fusion_fold(res.out / "fold_0").model
    assert net.spec.cross and float(net.wide_cross_w.abs().sum()) > 0
    assert float(net.wide_slide_comp.abs().sum()) > 0
    if protos:  # the fold's prototypes travel with the weights
        assert tuple(net.wide_protos.shape) == (protos, 32)
        assert float(net.wide_protos.abs().sum()) > 0


def _metas(out):
    import json

    return [json.loads(p.read_text()) for p in sorted(out.glob("fold_*/meta.json"))]


def test_the_cross_form_is_chosen_per_fold_from_training_patients(tmp_path):
    """``cross_prototypes: [none, 0, 8]``: per fold, the slide-term form (none, mean tile or
    8 prototype shares) whose wide part scores best over folds of the training patients;
    that fold then is the run with that form alone (same risks, network and ``cross``
    baseline; for ``none`` the run without ``cross`` and its clinical + omics PCA Cox), and
    the choice and every form's score are in its meta.json (on this weak-interaction cohort
    the three folds choose the three forms)."""
    co = make_interaction_cohort(90, family="manifold", seed=3, tiles_per_slide=(40, 80),
                                 risk_scale=0.7)  # fmt: skip
    paths = co.save(tmp_path)
    wsimm.bags_to_store(co.bags, tmp_path / "s.zarr")
    runs = {}
    for name, kw, base in (
        ("choice", {"cross": True, "cross_prototypes": ["none", 0, 8]}, "slide_cross"),
        ("mean", {"cross": True, "cross_prototypes": 0}, "slide_cross"),
        ("protos", {"cross": True, "cross_prototypes": 8}, "slide_cross"),
        ("none", {}, "pca"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            runs[name] = train(
                store=str(tmp_path / "s.zarr"), labels=str(paths["labels"]),
                omics=str(paths["omics"]), clinical=str(paths["clinical"]),
                gene_groups=str(paths["gene_groups"]), task="survival", fusion="graph",
                survival_loss="cox", folds=3, epochs=2, seed=1,
                fusion_kwargs={**kw, "hidden": 16}, baselines=f"clinical_omics_{base}_cox",
                out=str(tmp_path / name), quiet=True, threads=1,
            )  # fmt: skip
    chosen = []
    forms = ("none", 0, 8)
    for f, meta in zip(runs["choice"].metrics["folds"], _metas(runs["choice"].out), strict=True):
        scores = meta["cross_validation"]
        assert set(scores) == {"none", "0", "8"}
        best = max(forms, key=lambda k: (scores[str(k)], -forms.index(k)))  # first on ties
        assert f["cross_prototypes"] == meta["cross_prototypes"] == best
        chosen.append(best)
        same = runs[{"none": "none", 0: "mean", 8: "protos"}[best]]
        base = "pca" if best == "none" else "slide_cross"
        for sub, other in (("", ""), ("baselines/clinical_omics_slide_cross_cox/",
                                      f"baselines/clinical_omics_{base}_cox/")):  # fmt: skip
            a, b = (
                pd.read_csv(r.out / s / "predictions.csv").query(f"fold == {f['fold']}")
                for r, s in ((runs["choice"], sub), (same, other))
            )
            np.testing.assert_allclose(a["risk"], b["risk"], rtol=1e-6, atol=1e-6)
    assert sorted(map(str, chosen)) == ["0", "8", "none"]
    # a fold that chose no slide terms is saved as a plain graph fusion, and reloads as one
    from wsimm.train._fusion import load_fusion_fold

    plain = load_fusion_fold(runs["choice"].out / f"fold_{chosen.index('none')}").model
    assert not plain.spec.cross and not hasattr(plain, "wide_cross_w")


def test_too_few_training_tiles_for_the_prototypes_is_one_clear_error(tmp_path):
    co = make_interaction_cohort(12, family="types", seed=1, tiles_per_slide=(3, 4), feature_dim=8)
    paths = co.save(tmp_path)
    wsimm.bags_to_store(co.bags, tmp_path / "s.zarr")
    with pytest.raises(DataError, match=r"64 prototypes need at least 64 training tiles, have \d+"):
        train(store=str(tmp_path / "s.zarr"), labels=str(paths["labels"]),
              omics=str(paths["omics"]), clinical=str(paths["clinical"]),
              gene_groups=str(paths["gene_groups"]), task="survival", fusion="graph",
              survival_loss="cox", folds=2, epochs=1, baselines="none", quiet=True,
              fusion_kwargs={"cross": True, "cross_prototypes": 64, "hidden": 8, "heads": 2},
              out=str(tmp_path / "run"))  # fmt: skip
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_network_baselines_train_without_the_switches_settings(tmp_path):
    """``cross_prototypes`` (like ``cross_slide_pcs``, ``temperature``) goes with its switch:
    the network baselines, trained without the switches, are not refused for it."""
    co = make_interaction_cohort(40, family="manifold", seed=2, tiles_per_slide=(20, 30),
                                 feature_dim=8)  # fmt: skip
    paths = co.save(tmp_path)
    wsimm.bags_to_store(co.bags, tmp_path / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        res = train(store=str(tmp_path / "s.zarr"), labels=str(paths["labels"]),
                    omics=str(paths["omics"]), clinical=str(paths["clinical"]),
                    gene_groups=str(paths["gene_groups"]), task="survival", fusion="graph",
                    survival_loss="cox", folds=2, epochs=1, quiet=True,
                    baselines="kronecker_fusion,graph_fusion,clinical_omics_slide_cross_cox",
                    fusion_kwargs={"cross": True, "cross_prototypes": 4, "cross_omics_pcs": 2,
                                   "contrastive": 0.1, "temperature": 0.2, "hidden": 8,
                                   "heads": 2},
                    out=str(tmp_path / "run"))  # fmt: skip
    for name, b in res.metrics["baselines"].items():
        assert not b["failed"] and len(b["folds"]) == 2, name
