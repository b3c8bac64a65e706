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
pytestmark = [
    pytest.mark.slow,  # two processes per run, several runs: the slow tier
    pytest.mark.skipif(WSIMM is None, reason="the wsimm command is not installed"),
]


def _both(tmp_path, **opts) -> tuple[dict, dict]:
    """The same run in one process (the Python API) and under torchrun with 2 (the CLI, the
    way users launch it): plain options become flags, dict options go into --config."""
    one = _one_process(tmp_path / "one", **opts)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "".join(f"{k}: {json.dumps(v)}\n" for k, v in opts.items() if isinstance(v, dict))
    )
    flags = ["--config", str(cfg)]
    for k, v in opts.items():
        if not isinstance(v, dict):
            flags += [f"--{k.replace('_', '-')}", str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--no-python", WSIMM, "train", *flags, "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [*cmd, "--device", "cpu", "--quiet"], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return one, json.loads((tmp_path / "two" / "metrics.json").read_text())


def _one_process(out, **kw) -> dict:
    kw = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in kw.items()}
    train(TrainConfig(out=str(out), device="cpu", **kw), quiet=True)
    return json.loads((out / "metrics.json").read_text())


def _same_run(one: dict, two: dict, key: str) -> None:
    assert two["processes"] == 2 and "processes" not in one
    assert [f["fold"] for f in one["folds"]] == [f["fold"] for f in two["folds"]]
    for a, b in zip(one["folds"], two["folds"], strict=True):
        assert a["best_epoch"] == b["best_epoch"]
        assert a["n_test"] == b["n_test"]
        assert b[key] == pytest.approx(a[key], abs=1e-6)


NO_DROPOUT = {"dropout": 0.0}


@pytest.mark.parametrize("model", ["abmil", "clam_mb"])  # CLAM: a per-bag instance loss too
def test_torchrun_mil_grading_matches_one_process(small_grade, tmp_path, model):
    _, store, labels = small_grade
    # batch size 5 over 2 processes: uneven shards (3 + 2), and a last batch of one bag
    one, two = _both(
        tmp_path, store=store, labels=labels, task="grade", model=model, folds=3, epochs=4,
        batch_size=5, model_kwargs=NO_DROPOUT,
    )  # fmt: skip
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
    one, two = _both(
        tmp_path, store=store, labels=labels, task="survival", survival_loss="cox", folds=3,
        epochs=4, model_kwargs=NO_DROPOUT,
    )  # fmt: skip
    _same_run(one, two, "c_index")
    a = pd.read_csv(tmp_path / "one" / "predictions.csv")
    b = pd.read_csv(tmp_path / "two" / "predictions.csv")
    # Cox's loss is blind to a common shift of the risks: the head's bias gets a zero gradient
    # up to rounding, which AdamW's normalisation turns into steps, so each fold's risks may
    # differ by a constant; centred per fold they agree to float rounding
    assert a["fold"].tolist() == b["fold"].tolist()
    centred = [d.groupby("fold")["risk"].transform(lambda r: r - r.mean()) for d in (a, b)]
    np.testing.assert_allclose(centred[1], centred[0], atol=1e-5)
    assert (a["risk_group"] == b["risk_group"]).all()


def test_torchrun_graph_fusion_matches_one_process(tmp_path):
    pytest.importorskip("torch_geometric")
    pytest.importorskip("lifelines")
    import wsimm

    co = wsimm.make_cohort(36, seed=11, tiles_per_slide=(20, 40), feature_dim=16)
    paths = co.save(tmp_path / "data")
    store = tmp_path / "data" / "s.zarr"
    wsimm.bags_to_store(co.bags, store)
    one, two = _both(
        tmp_path, store=store, labels=paths["labels"], omics=paths["omics"],
        clinical=paths["clinical"], gene_groups=paths["gene_groups"], task="survival",
        survival_loss="cox", fusion="graph", folds=3, epochs=3, baselines="omics_net",
        fusion_kwargs={"hidden": 16, "heads": 2, "dropout": 0.0, "modality_dropout": 0.25},
        model_kwargs=NO_DROPOUT,
    )  # fmt: skip
    _same_run(one, two, "c_index")
    nets = (one["baselines"]["omics_net"]["folds"], two["baselines"]["omics_net"]["folds"])
    for a, b in zip(*nets, strict=True):  # the network baselines train data-parallel too
        assert b["c_index"] == pytest.approx(a["c_index"], abs=1e-6)
    assert (tmp_path / "two" / "baselines" / "omics_net" / "predictions.csv").is_file()


def test_torchrun_refuses_fusion_bag_norm_before_writing(tmp_path):
    """The fusion's BagNorm would sum statistics over processes that may hold no slide in a
    batch (a hang): under torchrun it is one error, and no run folder."""
    pytest.importorskip("torch_geometric")
    import wsimm

    co = wsimm.make_cohort(24, seed=4, tiles_per_slide=(10, 20), feature_dim=8)
    paths = co.save(tmp_path / "data")
    wsimm.bags_to_store(co.bags, tmp_path / "data" / "s.zarr")
    (tmp_path / "cfg.yaml").write_text("model_kwargs: {bag_norm: true}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--no-python", WSIMM, "train", "--store", str(tmp_path / "data" / "s.zarr"),
            "--labels", str(paths["labels"]), "--omics", str(paths["omics"]), "--task", "grade",
            "--fusion", "graph", "--folds", "2", "--config", str(tmp_path / "cfg.yaml"),
            "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0
    assert "bag_norm: true is not supported for fusion runs under torchrun" in p.stderr
    assert not (tmp_path / "run").exists()
