"""Every example runs offline on synthetic data."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def _read_slides(out: Path) -> None:
    from PIL import Image

    with Image.open(out / "thumbnail.png") as thumb, Image.open(out / "centre.png") as centre:
        assert max(thumb.size) == 512 and thumb.mode == "RGB"
        assert np.asarray(centre).std() > 5  # tissue, not a blank read


def _tile_and_embed(out: Path) -> None:
    from wsimm.store import open_store

    fs = open_store(out / "cohort.zarr")
    assert len(fs.slides()) == 3
    for sid in fs.slides():
        n = len(fs.coords(sid))
        assert n > 0 and set(fs.encoders(sid)) >= {"mean_rgb"}
        for enc in fs.encoders(sid):
            assert fs.feature_shape(sid, enc)[0] == n
    assert len(list((out / "h5").glob("*.h5"))) == 3
    assert len(list((out / "qc").glob("*.png"))) >= 3


def _train_abmil_grading(out: Path) -> None:
    m = json.loads((out / "run" / "metrics.json").read_text())
    pred = pd.read_csv(out / "run" / "predictions.csv")
    assert len(m["folds"]) == 4 and sorted(pred["patient_id"]) == [f"P{i:02d}" for i in range(16)]
    # tumour vs normal slides are easy: the cross-validated AUC says the model learnt it
    assert m["mean"]["auc"] >= 0.9, m["mean"]
    assert any((out / "heatmaps").rglob("*.png"))


def _fusion_survival(out: Path) -> None:
    table = pd.read_csv(out / "run" / "comparison.csv").set_index("fold")
    assert {"graph_fusion", "clinical_cox", "clinical_omics_pca_cox"} <= set(table.columns)
    # omics and clinical carry the risk in this cohort: the fusion finds it
    assert table.loc["mean", "graph_fusion"] >= 0.65, table.loc["mean"]
    m = json.loads((out / "run" / "metrics.json").read_text())
    assert len(m["folds"]) == 3 and set(m["clinical"]["columns"]) == {"age", "sex", "stage"}


CHECKS = {
    "read_slides": _read_slides,
    "tile_and_embed": _tile_and_embed,
    "train_abmil_grading": _train_abmil_grading,
    "fusion_survival": _fusion_survival,
}


def test_every_example_is_checked():
    assert {p.stem for p in EXAMPLES} == set(CHECKS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(path), "--out", str(tmp_path)])
    runpy.run_path(str(path), run_name="__main__")
    CHECKS[path.stem](tmp_path)


NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("scanpy")

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert not errors
    assert any("patients with slides and omics" in o.get("text", "")
               for c in nb.cells for o in c.get("outputs", []))  # fmt: skip
