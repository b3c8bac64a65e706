"""Survival from omics and clinical data with graph fusion, against a clinical Cox baseline.

With ``--tcga blca|brca|luad`` it runs on the real TCGA tables in ``../shared/data/tcga`` (the
five published folds, age / sex / subtype as clinical variables, the six gene families as gene
groups; several minutes). By default it runs offline on a synthetic cohort wsimm generates, in
about a minute. Every baseline is fitted on the same folds; the comparison table is printed.

    python examples/fusion_survival.py [--tcga blca] [--epochs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga"


def _tcga(cohort: str, out: Path) -> dict:
    table = SHARED / f"tcga_{cohort}_all_clean.csv.zip"
    if not table.is_file():
        raise SystemExit(f"{table} not found: run without --tcga for the synthetic cohort")
    return {
        "labels": str(table),
        "omics": str(table),
        "clinical": str(table),
        "clinical_cols": ["age", "is_female", "oncotree_code"],
        "gene_groups": str(SHARED / "signatures.csv"),
        "patient_col": "case_id",
        "slide_col": "slide_id",
        "time_col": "survival_months",
        "censorship_col": "censorship",
        "splits": str(SHARED / "splits" / f"tcga_{cohort}"),
        "survival_loss": "cox",
        "lr": 2e-4,
        "weight_decay": 1e-2,
        "fusion_kwargs": {"hidden": 64, "dropout": 0.5},
    }


def main(argv: list[str] | None = None) -> Path:
    from wsimm.testing import make_cohort
    from wsimm.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tcga", choices=["blca", "brca", "luad"], default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wsimm-example-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.tcga:
        kw = _tcga(args.tcga, out)
        epochs = args.epochs or 20
    else:  # omics and clinical carry the risk; no slides
        files = make_cohort(240, seed=0, slides=None, weights=(0.0, 1.0, 1.0)).save(out / "tables")
        kw = {"labels": str(files["labels"]), "omics": str(files["omics"]),
              "clinical": str(files["clinical"]), "gene_groups": str(files["gene_groups"]),
              "folds": 3, "survival_loss": "cox"}  # fmt: skip
        epochs = args.epochs or 15
    train(task="survival", fusion="graph", epochs=epochs, out=str(out / "run"), overwrite=True,
          **kw)  # fmt: skip
    table = pd.read_csv(out / "run" / "comparison.csv")
    print(table.to_string(index=False))
    return out


if __name__ == "__main__":
    main()
