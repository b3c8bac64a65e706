"""Results do not depend on the row order of the tables (issue 25): the same patients in
shuffled labels, omics, clinical and gene-group tables give the same folds and, bit for bit,
the same predictions, for a fusion run with its baselines and for a slide-only MIL run."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

import wsimm
from wsimm.errors import WsimmWarning
from wsimm.train import train


def _shuffled(paths: dict, d, names) -> dict:
    out = dict(paths)
    d.mkdir()
    for k in names:
        df = pd.read_csv(paths[k], dtype={"patient_id": str})
        out[k] = d / f"{k}.csv"
        df.sample(frac=1, random_state=7).to_csv(out[k], index=False)
    return out


def _same_run(a, b) -> None:
    sa, sb = (
        pd.read_csv(r / "splits.csv", dtype={"patient_id": str})
        .sort_values(["fold", "set", "patient_id"])
        .reset_index(drop=True)
        for r in (a, b)
    )
    pd.testing.assert_frame_equal(sa, sb)
    for rel in ["predictions.csv"] + [
        f"baselines/{p.name}/predictions.csv" for p in sorted((a / "baselines").glob("*"))
    ] * (a / "baselines").is_dir():
        pa, pb = (
            pd.read_csv(r / rel, dtype={"patient_id": str}).set_index("patient_id").sort_index()
            for r in (a, b)
        )
        pd.testing.assert_frame_equal(pa, pb, check_exact=True, obj=rel)


def test_fusion_run_ignores_row_order(tmp_path):
    co = wsimm.make_cohort(90, seed=5, slides=None)
    paths = co.save(tmp_path / "a")
    shuffled = _shuffled(paths, tmp_path / "b", ("labels", "omics", "clinical", "gene_groups"))
    runs = []
    for tag, p in (("a", paths), ("b", shuffled)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            train(
                labels=str(p["labels"]), omics=str(p["omics"]), clinical=str(p["clinical"]),
                gene_groups=str(p["gene_groups"]), task="survival", fusion="graph",
                survival_loss="cox", folds=3, epochs=3, quiet=True, out=str(tmp_path / f"r{tag}"),
                baselines="clinical_cox,clinical_omics_pca_cox,omics_net",
            )  # fmt: skip
        runs.append(tmp_path / f"r{tag}")
    _same_run(*runs)
    assert len(list((runs[0] / "baselines").glob("*/predictions.csv"))) == 3


def test_mil_run_ignores_row_order(tmp_path):
    c = wsimm.make_mil_cohort(36, seed=3, feature_dim=16, tiles_per_slide=(20, 30))
    wsimm.bags_to_store(c.bags, tmp_path / "s.zarr")
    lab = tmp_path / "labels.csv"
    c.labels.to_csv(lab, index=False)
    shuffled = _shuffled({"labels": lab}, tmp_path / "b", ("labels",))
    assert not np.array_equal(
        pd.read_csv(lab)["slide_id"].to_numpy(), pd.read_csv(shuffled["labels"])["slide_id"]
    )
    runs = []
    for tag, p in (("a", lab), ("b", shuffled["labels"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            train(
                store=str(tmp_path / "s.zarr"), labels=str(p), task="grade", folds=3, epochs=3,
                batch_size=4, quiet=True, out=str(tmp_path / f"r{tag}"),
            )  # fmt: skip
        runs.append(tmp_path / f"r{tag}")
    _same_run(*runs)
