"""``wsimm train`` under ``torchrun --nproc-per-node 2`` on CPU (gloo): the same optimiser
steps as one process, so the same folds, metrics and predictions (to float rounding), and one
run directory written by rank 0. Dropout is off so both runs draw no random masks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from wsimm.train import TrainConfig, train

WSIMM = shutil.which("wsimm", path=os.path.dirname(sys.executable)) or shutil.which("wsimm")
pytestmark = pytest.mark.skipif(WSIMM is None, reason="the wsimm command is not installed")


def _torchrun(args: list[str], out) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--no-python", WSIMM, "train", *args, "--out", str(out), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _one_process(out, **kw) -> dict:
    train(TrainConfig(out=str(out), device="cpu", **kw), quiet=True)
    return json.loads((out / "metrics.json").read_text())


def _same_run(one: dict, two: dict, key: str) -> None:
    assert two["processes"] == 2 and "processes" not in one
    assert [f["fold"] for f in one["folds"]] == [f["fold"] for f in two["folds"]]
    for a, b in zip(one["folds"], two["folds"], strict=True):
        assert a["best_epoch"] == b["best_epoch"]
        assert a["n_test"] == b["n_test"]
        assert b[key] == pytest.approx(a[key], abs=1e-6)


def test_torchrun_abmil_grading_matches_one_process(small_grade, tmp_path):
    _, store, labels = small_grade
    opts = dict(store=str(store), labels=str(labels), task="grade", folds=3, epochs=4)
    # batch size 5 over 2 processes: uneven shards (3 + 2), and a last batch of one bag
    opts["batch_size"] = 5
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model_kwargs: {dropout: 0.0}\n")
    one = _one_process(tmp_path / "one", model_kwargs={"dropout": 0.0}, **opts)
    flags = ["--store", str(store), "--labels", str(labels), "--task", "grade"]
    flags += ["--folds", "3", "--epochs", "4", "--batch-size", "5", "--config", str(cfg)]
    two = _torchrun(flags, tmp_path / "two")
    _same_run(one, two, "auc")
    a = pd.read_csv(tmp_path / "one" / "predictions.csv")
    b = pd.read_csv(tmp_path / "two" / "predictions.csv")
    assert a["patient_id"].tolist() == b["patient_id"].tolist()
    np.testing.assert_allclose(b.filter(like="prob_"), a.filter(like="prob_"), atol=1e-4)
    for k in range(3):  # rank 0 wrote every fold, history equal epoch by epoch
        h1 = pd.read_csv(tmp_path / "one" / f"fold_{k}" / "history.csv")
        h2 = pd.read_csv(tmp_path / "two" / f"fold_{k}" / "history.csv")
        np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-4)


def test_torchrun_cox_survival_matches_one_process(small_survival, tmp_path):
    """Cox's partial likelihood does not split over bags: its risk sets span the whole batch,
    which the gathered-loss step keeps."""
    _, store, labels = small_survival
    opts = dict(store=str(store), labels=str(labels), task="survival", survival_loss="cox")
    opts.update(folds=3, epochs=4)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model_kwargs: {dropout: 0.0}\n")
    one = _one_process(tmp_path / "one", model_kwargs={"dropout": 0.0}, **opts)
    flags = ["--store", str(store), "--labels", str(labels), "--task", "survival"]
    flags += ["--survival-loss", "cox", "--folds", "3", "--epochs", "4", "--config", str(cfg)]
    two = _torchrun(flags, tmp_path / "two")
    _same_run(one, two, "c_index")
    a = pd.read_csv(tmp_path / "one" / "predictions.csv")
    b = pd.read_csv(tmp_path / "two" / "predictions.csv")
    np.testing.assert_allclose(b["risk"], a["risk"], atol=1e-2)
    assert (a["risk_group"] == b["risk_group"]).mean() >= 0.9


def test_torchrun_graph_fusion_matches_one_process(tmp_path):
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    import wsimm

    co = wsimm.make_cohort(36, seed=11, tiles_per_slide=(20, 40), feature_dim=16)
    paths = co.save(tmp_path / "data")
    store = tmp_path / "data" / "s.zarr"
    wsimm.bags_to_store(co.bags, store)
    kw = {"hidden": 16, "heads": 2, "dropout": 0.0, "modality_dropout": 0.25}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"fusion_kwargs: {json.dumps(kw)}\nmodel_kwargs: {{dropout: 0.0}}\n")
    inputs = dict(
        store=str(store),
        labels=str(paths["labels"]),
        omics=str(paths["omics"]),
        clinical=str(paths["clinical"]),
        gene_groups=str(paths["gene_groups"]),
    )
    opts = dict(task="survival", survival_loss="cox", fusion="graph", folds=3, epochs=3)
    one = _one_process(
        tmp_path / "one",
        baselines="omics_net",
        fusion_kwargs=kw,
        model_kwargs={"dropout": 0.0},
        **inputs,
        **opts,
    )
    flags = [x for k, v in inputs.items() for x in (f"--{k.replace('_', '-')}", v)]
    flags += ["--task", "survival", "--survival-loss", "cox", "--fusion", "graph"]
    flags += ["--folds", "3", "--epochs", "3", "--baselines", "omics_net", "--config", str(cfg)]
    two = _torchrun(flags, tmp_path / "two")
    _same_run(one, two, "c_index")
    nets = (one["baselines"]["omics_net"]["folds"], two["baselines"]["omics_net"]["folds"])
    for a, b in zip(*nets, strict=True):  # the network baselines train data-parallel too
        assert b["c_index"] == pytest.approx(a["c_index"], abs=1e-6)
    assert (tmp_path / "two" / "baselines" / "omics_net" / "predictions.csv").is_file()
