"""Graph fusion on the PORPOISE-style TCGA tables, every setting chosen inside the training
folds (``--tune``), beside the baselines a statistician fits first, on the published folds.

For each ``tcga_<cohort>_all_clean.csv.zip`` with ``splits/tcga_<cohort>/`` beside it (the three
in ../shared/data/tcga, or all eight PORPOISE cohorts where a user has them): omics + clinical
(age, sex, subtype), no slides, 5 published folds, Cox loss. Per outer fold ``--tune`` picks
lr and weight decay by an inner 3-fold cross-validation on that fold's training patients.
Printed and written to ``--out``/results.md: the mean c-index over folds (sd) of graph fusion,
the clinical Cox model, the clinical + omics PCA Cox model and the omics-only network, and the
fusion's difference from the PCA Cox model fold by fold.

    python benchmarks/bench_tcga.py                         # the cohorts in ../shared/data/tcga
    python benchmarks/bench_tcga.py --tables ~/porpoise --jobs 2 --no-tune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TABLES = HERE.parents[1] / "shared" / "data" / "tcga"
BASELINES = ("clinical_cox", "clinical_omics_pca_cox", "omics_net")


def run_cohort(table: Path, out: Path, epochs: int, tune: bool, threads: int) -> dict:
    import torch

    from wsimm.train import train

    torch.set_num_threads(threads)
    cohort = table.name.split("_")[1]
    t0 = time.perf_counter()
    res = train(
        labels=str(table),
        omics=str(table),
        clinical=str(table),
        clinical_cols=["age", "is_female", "oncotree_code"],
        gene_groups=str(table.parent / "signatures.csv"),
        splits=str(table.parent / "splits" / f"tcga_{cohort}"),
        patient_col="case_id",
        slide_col="slide_id",
        time_col="survival_months",
        censorship_col="censorship",
        task="survival",
        fusion="graph",
        survival_loss="cox",
        epochs=epochs,
        tune={} if tune else None,
        baselines=",".join(BASELINES),
        out=str(out / cohort),
        overwrite=True,
        quiet=True,
    )
    m = res.metrics
    row = {
        "cohort": cohort,
        "seconds": round(time.perf_counter() - t0, 1),
        "graph_fusion": [r["c_index"] for r in m["folds"]],
        "tuned": m.get("tuning", {}).get("folds"),
    }
    for b in BASELINES:
        row[b] = [r["c_index"] for r in m["baselines"][b]["folds"]]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tables", type=Path, default=DEFAULT_TABLES)
    ap.add_argument("--cohorts", default=None, help="comma-separated (default: every table)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-tune", dest="tune", action="store_false")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per cohort")
    ap.add_argument("--jobs", type=int, default=1, help="cohorts run side by side")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process's cohort
    a = ap.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="wsimm-bench-tcga-"))
    out.mkdir(parents=True, exist_ok=True)
    if a.one:
        row = run_cohort(Path(a.one), out, a.epochs, a.tune, a.threads)
        (out / f"{row['cohort']}.json").write_text(json.dumps(row))
        return
    tables = sorted(a.tables.glob("tcga_*_all_clean.csv.zip"))
    if a.cohorts:
        want = set(a.cohorts.split(","))
        tables = [t for t in tables if t.name.split("_")[1] in want]
    tables = [t for t in tables if (t.parent / "splits" / f"tcga_{t.name.split('_')[1]}").is_dir()]
    if not tables:
        raise SystemExit(f"no tcga_<cohort>_all_clean.csv.zip with splits/ under {a.tables}")
    base = [sys.executable, __file__, "--out", str(out), "--epochs", str(a.epochs),
            "--threads", str(a.threads), *([] if a.tune else ["--no-tune"])]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    pending = list(tables)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < a.jobs:
            running.append(subprocess.Popen([*base, "--one", str(pending.pop(0))], env=env))
        running[0].wait()
        if running[0].returncode:
            raise SystemExit(f"a cohort failed (exit {running[0].returncode})")
        running.pop(0)
    rows = [json.loads((out / f"{t.name.split('_')[1]}.json").read_text()) for t in tables]
    report(rows, out, a)


def report(rows: list[dict], out: Path, a) -> None:
    import numpy as np

    def ms(v) -> str:
        return f"{np.mean(v):.3f} ({np.std(v, ddof=1):.3f})"

    cols = ("graph_fusion", *BASELINES)
    lines = [
        f"c-index, mean over the 5 published folds (sd); epochs {a.epochs}, "
        f"{'tuned inside the training folds' if a.tune else 'default settings'}\n",
        "| cohort | " + " | ".join(cols) + " | fusion - PCA Cox per fold | seconds |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in rows:
        diff = np.subtract(r["graph_fusion"], r["clinical_omics_pca_cox"])
        lines.append(
            f"| {r['cohort']} | " + " | ".join(ms(r[c]) for c in cols)
            + f" | {' '.join(f'{d:+.3f}' for d in diff)} | {r['seconds']} |"
        )  # fmt: skip
    text = "\n".join(lines)
    print(text)
    for r in rows:
        print(r["cohort"], "chosen per fold:", r["tuned"])
    (out / "results.md").write_text(text + "\n")
    print(f"\n(written to {out / 'results.md'})")


if __name__ == "__main__":
    main()
