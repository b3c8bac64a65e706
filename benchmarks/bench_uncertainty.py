"""Uncertainty-weighted fusion on noisy-modality cohorts (issue 25).

``wsimm.make_cohort(noisy=...)``: for a random 30% of the patients one modality was measured
badly (``omics``: a contaminated or degraded sample, its genes noise partly shared within
gene groups; ``slides``: tiles buried under artefact noise), the outcome untouched. The risk
is split evenly over the modalities the run has (omics and clinical; slides, omics and
clinical). Each run is ``wsimm train --fusion graph --survival-loss cox`` with
``fusion_kwargs: {uncertainty:
N}``: the same trained network scores every test patient with and without the uncertainty
weighting (``risk`` / ``risk_unweighted`` in predictions.csv), and without the noisy modality
(``risk_without_<m>``, the lower bound of what weighting could do wrong and, for the noisy
patients, roughly the best it could do). Printed per family and seed: the c-index of the
noisy and of the clean test patients (per fold, averaged), the mean uncertainty weight of
the noisy modality in each group, and the coverage of the 80% event-time intervals.

    python benchmarks/bench_uncertainty.py                      # omics and slides, seeds 0-2
    python benchmarks/bench_uncertainty.py --family omics --seeds 0 --passes 20
    python benchmarks/bench_uncertainty.py --task grade --family omics   # AUC, grade sets
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _auc(sub: pd.DataFrame, prefix: str) -> float:
    """One-vs-rest macro AUC of the grade columns ``<prefix><c>`` over ``sub`` (pooled over
    folds: a fold holds too few affected patients of every grade)."""
    from sklearn.metrics import roc_auc_score

    cols = sorted(c for c in sub.columns if c.startswith(prefix) and c[len(prefix) :].isdigit())
    y = sub["label"].to_numpy()
    if len(np.unique(y)) < len(cols):
        return float("nan")
    prob = sub[cols].to_numpy()
    return float(roc_auc_score(y, prob / prob.sum(1, keepdims=True), multi_class="ovr"))


def run(
    family: str, seed: int, passes: int, patients: int, root: Path, task: str = "survival"
) -> dict:
    import wsimm
    from wsimm.survival import c_index
    from wsimm.train import train

    # the risk split over the modalities the run has (no slides in the omics family)
    weights = (1.0, 1.0, 1.0) if family == "slides" else (0.0, 1.0, 1.0)
    co = wsimm.make_cohort(
        patients, seed=seed, weights=weights, tiles_per_slide=(40, 80), feature_dim=32,
        signal_fraction=0.1, slide_intensity=2.0, noisy=family, p_noisy=0.3, noise_scale=3.0,
        slides="bags" if family == "slides" else None,
    )  # fmt: skip
    d = root / f"{family}{seed}"
    paths = co.save(d)
    kw = {}
    if family == "slides":
        wsimm.bags_to_store(co.bags, d / "s.zarr")
        kw["store"] = str(d / "s.zarr")
    t0 = time.perf_counter()
    res = train(
        labels=str(paths["labels"]), omics=str(paths["omics"]), clinical=str(paths["clinical"]),
        gene_groups=str(paths["gene_groups"]), task=task, fusion="graph",
        survival_loss="cox", folds=5, baselines="none", out=str(d / "run"), quiet=True,
        fusion_kwargs={"uncertainty": passes}, **kw,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    mod = "slide" if family == "slides" else "omics"
    p = res.predictions.merge(co.patients[["patient_id", "noisy"]], on="patient_id")
    row = {"family": family, "seed": seed, "wall_s": round(wall, 1)}
    folds = res.metrics["folds"]
    if task == "grade":
        for name, sub in (("noisy", p[p["noisy"]]), ("clean", p[~p["noisy"]])):
            row[f"{name}_weighted"] = _auc(sub, "prob_")
            row[f"{name}_unweighted"] = _auc(sub, "prob_unweighted_")
            row[f"{name}_weight"] = float(sub[f"uweight_{mod}"].mean())
        row["coverage"] = float(np.mean([f["interval_coverage"] for f in folds]))
        row["set_mass"] = float(np.mean([f["interval_mass"] for f in folds]))
        row["auc_all"] = float(np.mean([f["auc"] for f in folds]))
        row["auc_all_unweighted"] = float(np.mean([f["auc_unweighted"] for f in folds]))
        return row
    for name, sub in (("noisy", p[p["noisy"]]), ("clean", p[~p["noisy"]])):
        for col, tag in (
            ("risk", "weighted"),
            ("risk_unweighted", "unweighted"),
            (f"risk_without_{mod}", f"without_{mod}"),
        ):
            row[f"{name}_{tag}"] = np.mean(
                [c_index(g["time"], g["event"], g[col]) for _, g in sub.groupby("fold")]
            )
        row[f"{name}_weight"] = float(sub[f"uweight_{mod}"].mean())
    row["coverage"] = float(np.mean([f["interval_coverage"] for f in folds]))
    row["c_index_all"] = float(np.mean([f["c_index"] for f in folds]))
    row["c_index_all_unweighted"] = float(np.mean([f["c_index_unweighted"] for f in folds]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", default=["omics", "slides"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--task", choices=["survival", "grade"], default="survival")
    ap.add_argument("--csv", help="write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.family:
            for seed in args.seeds:
                rows.append(run(fam, seed, args.passes, args.patients, Path(tmp), args.task))
                print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(3).to_string(index=False))
    num = df.drop(columns=["seed"]).groupby("family").mean()
    print("\nmean over seeds:\n" + num.round(3).to_string())
    metric = "c-index" if args.task == "survival" else "AUC (pooled over folds)"
    for fam, g in df.groupby("family"):
        gain = g["noisy_weighted"] - g["noisy_unweighted"]
        print(
            f"{fam}: noisy patients weighted - unweighted {metric} per seed "
            f"{' '.join(f'{v:+.3f}' for v in gain)}; clean "
            f"{' '.join(f'{v:+.3f}' for v in g['clean_weighted'] - g['clean_unweighted'])}; "
            f"coverage of 80% intervals {' '.join(f'{v:.3f}' for v in g['coverage'])}"
            + (
                f" (the probability the grade sets hold: "
                f"{' '.join(f'{v:.3f}' for v in g['set_mass'])})"
                if "set_mass" in g
                else ""
            )
        )
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
