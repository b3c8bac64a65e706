"""``wsimm train --fusion``: the run directory, baselines on the same folds, modality removal,
interpretation, missing modalities, and the guards on fusion inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

from typer.testing import CliRunner

import wsimm
from wsimm.errors import ConfigError, DataError, WsimmWarning
from wsimm.train import TrainConfig, train
from wsimm_cli.main import app


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    d = tmp_path_factory.mktemp("mm")
    co = wsimm.make_cohort(40, seed=11, tiles_per_slide=(20, 40), feature_dim=16)
    paths = co.save(d)
    wsimm.bags_to_store(co.bags, d / "s.zarr")
    return co, paths, d / "s.zarr"


def _cfg(paths, store, out, **kw):
    base = dict(
        store=str(store) if store else None,
        labels=str(paths["labels"]),
        omics=str(paths["omics"]),
        clinical=str(paths["clinical"]),
        gene_groups=str(paths["gene_groups"]),
        task="survival",
        fusion="graph",
        folds=3,
        epochs=3,
        out=str(out),
        fusion_kwargs={"hidden": 16, "heads": 2},
    )
    base.update(kw)
    return TrainConfig(**base)


def test_graph_fusion_run_directory(multimodal, tmp_path):
    co, paths, store = multimodal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        res = train(_cfg(paths, store, tmp_path / "run"), quiet=True)
    out = res.out
    assert not res.failed
    m = json.loads((out / "metrics.json").read_text())
    assert m["modalities"] == ["slide", "omics", "clinical"]
    assert m["task"] == "survival" and len(m["folds"]) == 3
    for key in ("c_index", "c_index_without_slide", "c_index_without_omics"):
        assert np.isfinite(m["mean"][key])
    want = {
        "clinical_cox",
        "clinical_omics_pca_cox",
        "omics_net",
        "slide_mil",
        "clinical_net",
        "late_fusion",
        "concat_fusion",
        "kronecker_fusion",
    }
    assert set(m["baselines"]) == want
    for name, b in m["baselines"].items():
        assert not b["failed"], name
        assert len(b["folds"]) == 3
        bp = pd.read_csv(out / "baselines" / name / "predictions.csv")
        assert sorted(bp["patient_id"]) == sorted(co.patients["patient_id"])
    cmp = pd.read_csv(out / "comparison.csv")
    assert list(cmp["fold"]) == ["0", "1", "2", "mean"]
    assert {"graph_fusion", *want} <= set(cmp.columns)

    # every patient scored once, including those without slides or without omics
    pred = pd.read_csv(out / "predictions.csv")
    assert sorted(pred["patient_id"]) == sorted(co.patients["patient_id"])
    truth = co.patients.set_index("patient_id")
    p = pred.set_index("patient_id")
    no_slide = truth.index[truth["n_slides"] == 0]
    no_omics = truth.index[~truth["has_omics"]]
    assert len(no_slide) and len(no_omics)
    # modality weights sum to one; absent modalities have none
    w = p[["weight_slide", "weight_omics", "weight_clinical"]]
    np.testing.assert_allclose(w.fillna(0).sum(1), 1.0, atol=1e-4)
    assert w.loc[no_slide, "weight_slide"].isna().all()
    assert w.loc[no_omics, "weight_omics"].isna().all()
    ex = json.loads((out / "fold_0" / "explanations.json").read_text())
    one = next(iter(ex.values()))
    assert "modality_weights" in one and "top_clinical" in one
    pre = json.loads((out / "fold_0" / "preprocess.json").read_text())
    assert set(pre["genes"]) == {"rnaseq", "cnv", "mut"}


def test_fusion_without_store_and_grading(multimodal, tmp_path):
    co, paths, _ = multimodal
    cfg = _cfg(
        paths,
        None,
        tmp_path / "g",
        task="grade",
        fusion="kronecker",
        baselines="clinical_logreg,omics_net",
    )
    res = train(cfg, quiet=True)
    m = res.metrics
    assert m["modalities"] == ["omics", "clinical"]
    assert set(m["baselines"]) == {"clinical_logreg", "omics_net"}
    for key in ("auc", "kappa", "balanced_accuracy"):
        assert np.isfinite(m["mean"][key])
        assert np.isfinite(m["baselines"]["clinical_logreg"]["mean"][key])
    assert len(res.predictions) == len(co.patients)


def test_published_split_files_hold_out_val(multimodal, tmp_path):
    """Folds with only train/val columns: val is the test fold, validation comes from train."""
    co, paths, _ = multimodal
    ids = co.patients["patient_id"].to_numpy()
    sd = tmp_path / "splits"
    sd.mkdir()
    for k in range(2):
        test = ids[k::2]
        trn = np.setdiff1d(ids, test)
        pd.DataFrame({"train": pd.Series(trn), "val": pd.Series(test)}).to_csv(
            sd / f"splits_{k}.csv"
        )
    cfg = _cfg(paths, None, tmp_path / "r", splits=str(sd), baselines="none")
    res = train(cfg, quiet=True)
    s = pd.read_csv(res.out / "splits.csv")
    for k in range(2):
        d = s[s["fold"] == k]
        assert set(d.loc[d["set"] == "test", "patient_id"]) == set(ids[k::2])
        assert (d["set"] == "val").sum() > 0
        assert not set(d.loc[d["set"] == "val", "patient_id"]) & set(ids[k::2])


def test_fusion_guards(multimodal, tmp_path):
    _, paths, store = multimodal
    with pytest.raises(ConfigError, match="--fusion"):
        TrainConfig(store=str(store), labels="x", omics="o.csv").validate()
    with pytest.raises(ConfigError, match="--fusion must be"):
        TrainConfig(labels="x", omics="o.csv", fusion="magic").validate()
    with pytest.raises(DataError, match="ids or outcomes"):
        train(
            _cfg(
                paths,
                None,
                tmp_path / "a",
                clinical=str(paths["labels"]),
                clinical_cols=["time"],
            ),
            quiet=True,
        )
    other = tmp_path / "other.csv"
    om = pd.read_csv(paths["omics"])
    om["patient_id"] = "X" + om["patient_id"]
    om.to_csv(other, index=False)
    with pytest.raises(DataError, match="no patient"):
        train(_cfg(paths, None, tmp_path / "b", omics=str(other)), quiet=True)
    with pytest.raises(ConfigError, match="unknown baseline"):
        train(_cfg(paths, None, tmp_path / "c", baselines="nope"), quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_fusion(multimodal, tmp_path):
    _, paths, _ = multimodal
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--labels",
            str(paths["labels"]),
            "--omics",
            str(paths["omics_h5ad"]),
            "--clinical",
            str(paths["clinical"]),
            "--clinical-cols",
            "age,stage",
            "--task",
            "survival",
            "--fusion",
            "graph",
            "--baselines",
            "clinical_cox",
            "--folds",
            "3",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "clinical_cox" in r.output and "c_index" in r.output
    cfg = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cfg["modalities"] == ["omics", "clinical"]
