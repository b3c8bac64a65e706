"""CLAM's own training code on the bags and folds of ``bench_mil.py`` (issue 22).

For each cell and seed this builds exactly the cohort and patient-level splits that
``benchmarks/bench_mil.py`` trains wsimm on, writes them the way CLAM reads them (one
``pt_files/<slide>.pt`` per slide, its dataset CSV, ``splits_<k>.csv`` with the slide ids of
each fold's train / val / test patients) and runs CLAM's ``main.py`` from a checkout outside
this repository (mahmoodlab/CLAM; its code is run, never copied). A patient's score is the
maximum over its slides' tumour probabilities (CLAM's own patient voting), so the AUC is
patient-level like wsimm's. Printed: AUC per fold and the epochs CLAM trained (it has no
selection: the last epoch is tested unless ``--early-stopping``).

CLAM's ``main.py`` reads its task's CSV from a fixed path: the file
``dataset_csv/tumor_vs_normal_dummy_clean.csv`` of the checkout is replaced for the run and put
back afterwards.

    python benchmarks/peer_clam_mil.py --clam ../peers/CLAM --family clusters --strengths 2.5 \\
        --fractions 0.05 --seeds 0 1 2                  # CLAM-SB without instance clustering
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mil import cohort  # the same generator call as the wsimm side

LABELS = {0: "normal_tissue", 1: "tumor_tissue"}  # the label names CLAM's task 1 expects


def clam_inputs(c, splits: pd.DataFrame, d: Path) -> None:
    import torch

    feats = d / "tumor_vs_normal_resnet_features" / "pt_files"
    feats.mkdir(parents=True)
    for sid, bag in c.bags.items():
        torch.save(torch.from_numpy(np.asarray(bag, np.float32)), feats / f"{sid}.pt")
    grade = c.patients.set_index("patient_id")["grade"]
    lab = c.labels.assign(label=lambda t: t["patient_id"].map(grade).map(LABELS))
    lab.rename(columns={"patient_id": "case_id"})[["case_id", "slide_id", "label"]].to_csv(
        d / "dataset.csv", index=False
    )
    slides = c.labels.groupby("patient_id")["slide_id"].apply(list)
    (d / "splits").mkdir()
    for k, f in splits.groupby("fold", sort=True):
        cols = {
            part: [s for p in f.loc[f["set"] == part, "patient_id"] for s in slides[p]]
            for part in ("train", "val", "test")
        }
        n = max(map(len, cols.values()))
        pd.DataFrame({p: v + [None] * (n - len(v)) for p, v in cols.items()}).to_csv(
            d / "splits" / f"splits_{k}.csv"
        )


def run_clam(
    clam: Path, d: Path, args, seed: int, folds: int, dim: int
) -> tuple[list[float], float]:
    csv = clam / "dataset_csv" / "tumor_vs_normal_dummy_clean.csv"
    backup = csv.read_bytes() if csv.exists() else None
    shutil.copy(d / "dataset.csv", csv)
    t0 = time.perf_counter()
    try:
        cmd = [sys.executable, "main.py", "--task", "task_1_tumor_vs_normal",
               "--data_root_dir", str(d), "--split_dir", str(d / "splits"),
               "--results_dir", str(d / "results"), "--exp_code", "wsimm", "--k", str(folds),
               "--embed_dim", str(dim), "--max_epochs", str(args.epochs),
               "--model_type", args.model, "--seed", str(seed), "--drop_out", "0.25",
               "--lr", "2e-4", "--reg", "1e-5", "--bag_loss", "ce"]  # fmt: skip
        if args.no_inst_cluster:
            cmd.append("--no_inst_cluster")
        else:
            cmd += ["--inst_loss", "svm"]
        if args.early_stopping:
            cmd.append("--early_stopping")
        r = subprocess.run(cmd, cwd=clam, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"CLAM failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    finally:
        if backup is not None:
            csv.write_bytes(backup)
    return _patient_aucs(d, folds), time.perf_counter() - t0


def _patient_aucs(d: Path, folds: int) -> list[float]:
    from sklearn.metrics import roc_auc_score

    lab = pd.read_csv(d / "dataset.csv").set_index("slide_id")
    out = []
    res = next((d / "results").glob("wsimm_s*"))
    for k in range(folds):
        with open(res / f"split_{k}_results.pkl", "rb") as f:
            slides = pickle.load(f)
        df = pd.DataFrame(
            {"slide_id": str(v["slide_id"]), "p": float(np.ravel(v["prob"])[1])}
            for v in slides.values()
        )
        df["case_id"] = lab.loc[df["slide_id"], "case_id"].to_numpy()
        df["y"] = (lab.loc[df["slide_id"], "label"] == LABELS[1]).to_numpy()
        pat = df.groupby("case_id").agg(p=("p", "max"), y=("y", "first"))
        out.append(float(roc_auc_score(pat["y"], pat["p"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clam", required=True, help="a checkout of mahmoodlab/CLAM")
    ap.add_argument("--family", nargs="+", default=["clusters"])
    ap.add_argument("--strengths", nargs="+", type=float, default=[2.5])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--patients", type=int, default=240)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20, help="CLAM's --max_epochs")
    ap.add_argument("--model", default="clam_sb", choices=["clam_sb", "clam_mb", "mil"])
    ap.add_argument("--no-inst-cluster", action="store_true", default=True)
    ap.add_argument("--inst-cluster", dest="no_inst_cluster", action="store_false")
    ap.add_argument("--early-stopping", action="store_true")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    from wsimm.train import make_splits

    clam = Path(args.clam).resolve()
    rows = []
    for family in args.family:
        for s in args.strengths:
            for fr in args.fractions:
                for seed in args.seeds:
                    c = cohort(family, s, fr, seed, args.patients, "grade")
                    splits = make_splits(c.patients["patient_id"].tolist(),
                                         c.patients["grade"].to_numpy(), folds=args.folds,
                                         val_fraction=0.2, seed=seed)  # fmt: skip
                    with tempfile.TemporaryDirectory() as tmp:
                        d = Path(tmp)
                        clam_inputs(c, splits, d)
                        dim = int(next(iter(c.bags.values())).shape[1])
                        aucs, sec = run_clam(clam, d, args, seed, args.folds, dim)
                    f = np.asarray(aucs)
                    print(f"{family:8s} s={s:<4} f={fr:<5} seed={seed} CLAM {args.model}"
                          f"{'' if args.no_inst_cluster else '+inst'} mean {f.mean():.3f} "
                          f"min {f.min():.3f}  folds " + " ".join(f"{v:.3f}" for v in f)
                          + f"  ({args.epochs} epochs, {sec:.0f} s)", flush=True)  # fmt: skip
                    rows.append({"family": family, "strength": s, "fraction": fr, "seed": seed,
                                 "method": f"CLAM {args.model}", "folds": aucs,
                                 "epochs": args.epochs, "seconds": sec})  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
