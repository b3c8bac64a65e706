"""Graph fusion on a real TCGA table (../shared/data/tcga; skipped without it): omics + clinical
data, no slides for anyone, the five published folds, default settings.

A smoke test: the real table reads right (censorship convention, ids, gene groups, the
published folds), every patient is scored once, the clinical columns are the ones named, and
the models find the signal every published method finds on BLCA. The accuracy comparison
with settings tuned inside the training folds, on every cohort, is
``benchmarks/bench_tcga.py`` (figures in docs/stages/fusion.md)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("lifelines")

from tests.conftest import SHARED
from wsimm.train import train


def test_graph_fusion_on_tcga_blca(tmp_path):
    d = SHARED / "tcga"
    table = d / "tcga_blca_all_clean.csv.zip"
    if not table.is_file():
        pytest.skip(f"{table} not available (../shared/data is absent)")
    res = train(
        labels=str(table),
        omics=str(table),
        clinical=str(table),
        clinical_cols=["age", "is_female", "oncotree_code"],
        gene_groups=str(d / "signatures.csv"),
        splits=str(d / "splits" / "tcga_blca"),
        patient_col="case_id",
        slide_col="slide_id",
        time_col="survival_months",
        censorship_col="censorship",
        task="survival",
        fusion="graph",
        survival_loss="cox",
        epochs=8,
        baselines="clinical_omics_pca_cox",
        out=str(tmp_path / "run"),
        quiet=True,
    )
    m = res.metrics
    print((res.out / "comparison.csv").read_text())  # shown with -rP
    assert not res.failed and len(m["folds"]) == 5
    patients = pd.read_csv(table, usecols=["case_id"])["case_id"].nunique()
    pred = pd.read_csv(res.out / "predictions.csv")
    assert len(pred) == pred["patient_id"].nunique() == patients == 373
    # censorship = 1 means censored in these tables: 169 observed deaths (README)
    assert int(pred["event"].sum()) == 169
    assert set(m["clinical"]["columns"]) == {"age", "is_female", "oncotree_code"}
    # a flipped outcome convention or misread omics would put these near or under 0.5
    pca = m["baselines"]["clinical_omics_pca_cox"]["mean"]["c_index"]
    assert m["mean"]["c_index"] > 0.55 and pca > 0.55, (m["mean"]["c_index"], pca)
