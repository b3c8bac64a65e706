"""Graph fusion's switches, on and off, on cohorts whose risk is a slide x omics interaction
(issue 25), beside the baselines and two hand-made references, on the same folds.

Cohorts: :func:`wsimm.testing.make_interaction_cohort`, both independently written families
(``types``: a pathway decides whether type-A or type-B tiles carry the risk; ``manifold``: risk
= pathway x (type-A - type-B share), tiles rendered from a latent tissue state), one slide of
200-400 32-d tiles per patient, ``--patients`` patients, 5 patient-level folds per seed.

Rows (c-index on the test folds, mean over folds; every model picks its epoch on validation
patients only, as ``wsimm train`` does):

* ``graph`` (pooled slide node), ``graph +coattention``, ``graph +contrastive``,
  ``graph +coattention +contrastive``, ``graph +cross``, ``graph +cross +coattention``,
  ``graph +cross16`` (``cross`` on 16 tile prototypes), ``graph +cross16 +coattention``,
  ``graph +cross0|16`` (mean tile or 16 prototypes, chosen per fold by a cross-validation
  over its training patients), ``graph +crossnone|0|16`` (the same, or no slide terms):
  ``wsimm train --fusion graph`` with ``fusion_kwargs`` switches; each run with ``cross``
  also fits ``clinical_omics_slide_cross_cox``, its wide part alone (the row ``<variant>:
  its wide part alone``; with ``--no-baselines`` too: linear fits are cheap);
* the run's baselines on the same folds: ``late``/``concat``/``kronecker`` fusion, the
  clinical + omics PCA Cox (the wide part alone);
* references computed here on the same folds (penalised Cox, lifelines): ``additive Cox``
  on age, the pathway group's first principal component and 8 principal components of each
  slide's mean tile; ``interaction Cox`` adds those 8 components x the pathway component;
  ``true-shares Cox`` on age, the pathway component, the true type-A and type-B shares and
  their products with it (what a perfect tile-type counter could reach); and the
  ``true risk``.

    python benchmarks/bench_fusion.py --quick          # one seed of each family, ~20 min here
    python benchmarks/bench_fusion.py --seeds 0 1 2    # the issue's 3 seeds
    python benchmarks/bench_fusion.py --seeds 0 1 2 --variants graph "graph +cross" \
        "graph +cross +coattention" --json out.json
    python benchmarks/bench_fusion.py --task grade --seeds 0 1 2 --variants graph "graph +cross"

``--families additive`` runs the same rows on ``make_cohort`` with the fusion acceptance
test's settings (risk split evenly over slides, omics and clinical data; no interaction), to
show what a switch costs where there is nothing for it to find (no Cox references there).
``--no-baselines`` runs the variants alone (cohorts and folds are the same in every run, so
their rows join an earlier run's). ``--task grade`` scores AUC (three grades cut from the
same risk) and has no Cox references.
The last lines print each switch's smallest margin per cell over every other row but the
hand-made references.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

VARIANTS = {
    "graph": {},
    "graph +coattention": {"coattention": True},
    "graph +contrastive": {"contrastive": 0.1},
    "graph +coattention +contrastive": {"coattention": True, "contrastive": 0.1},
    "graph +cross": {"cross": True},
    "graph +cross +coattention": {"cross": True, "coattention": True},
    "graph +cross16": {"cross": True, "cross_prototypes": 16},
    "graph +cross16 +coattention": {"cross": True, "cross_prototypes": 16, "coattention": True},
    # the slide-term form (mean tile or 16 prototype shares) chosen per fold by a
    # cross-validation over its training patients; "none|0|16" may also choose no slide terms
    "graph +cross0|16": {"cross": True, "cross_prototypes": [0, 16]},
    "graph +crossnone|0|16": {"cross": True, "cross_prototypes": ["none", 0, 16]},
}
BASELINES = "late_fusion,concat_fusion,kronecker_fusion,clinical_omics_pca_{lin}"
#: the ``cross`` wide part alone, fitted beside every run with the switch on (a row per run)
CROSS_BASELINE = "clinical_omics_slide_cross_{lin}"


def references(co, splits: pd.DataFrame) -> dict[str, list[float]]:
    """Penalised Cox models on hand-made features, trained on each fold's training and
    validation patients, scored on its test patients; the true risk's c-index."""
    from lifelines import CoxPHFitter
    from sklearn.decomposition import PCA

    from wsimm.survival import c_index

    P = co.patients.set_index("patient_id")
    pids = P.index.tolist()
    means = np.stack([co.bags[f"{p}-S1"].astype(np.float64).mean(0) for p in pids])
    path = co.omics.reindex(pids)[[f"{g}_rnaseq" for g in co.gene_groups["PATHWAY"]]]
    out: dict[str, list[float]] = {
        "additive Cox": [],
        "interaction Cox": [],
        "true-shares Cox": [],
        "true risk": [],
    }
    for k in sorted(splits["fold"].unique()):
        fs = splits[splits["fold"] == k]
        tr = np.isin(pids, fs.loc[fs["set"] != "test", "patient_id"])
        te = np.isin(pids, fs.loc[fs["set"] == "test", "patient_id"])
        s = PCA(8, svd_solver="full").fit(means[tr]).transform(means)
        s /= s[tr].std(0)
        pv = path.to_numpy()
        pv = np.where(np.isnan(pv), np.nanmean(pv[tr], 0), pv)
        q = PCA(1, svd_solver="full").fit(pv[tr]).transform(pv)[:, 0]
        q /= q[tr].std()
        add = pd.DataFrame(s, columns=[f"s{i}" for i in range(8)])
        add["age"] = co.clinical.set_index("patient_id").loc[pids, "age"].to_numpy(float)
        add["q"] = q
        inter = add.assign(**{f"x{i}": s[:, i] * q for i in range(8)})
        # what a perfect tile-type counter could give: the true type-A/B shares x pathway
        z = P[["frac_a", "frac_b"]].to_numpy()
        z = (z - z[tr].mean(0)) / z[tr].std(0)
        shares = pd.DataFrame({"age": add["age"], "q": q, "za": z[:, 0], "zb": z[:, 1]})
        shares = shares.assign(zaq=z[:, 0] * q, zbq=z[:, 1] * q)
        t, e = P["time"].to_numpy(), P["event"].to_numpy()
        fits = (("additive Cox", add), ("interaction Cox", inter), ("true-shares Cox", shares))
        for name, X in fits:
            df = X.assign(T=t, E=e)
            m = CoxPHFitter(penalizer=0.1).fit(df[tr], "T", "E")
            out[name].append(c_index(t[te], e[te], m.predict_partial_hazard(df[te]).to_numpy()))
        out["true risk"].append(c_index(t[te], e[te], P["risk"].to_numpy()[te]))
    return out


def run_cell(
    family: str,
    seed: int,
    n: int,
    variants: list[str],
    root: Path,
    task: str = "survival",
    baselines: bool = True,
) -> dict:
    import torch

    import wsimm
    import wsimm.testing
    from wsimm.errors import WsimmWarning
    from wsimm.train import train

    torch.set_num_threads(1)
    if family == "additive":  # no interaction: what a switch costs where there is none
        co = wsimm.make_cohort(
            n, seed=seed, weights=(1.0, 1.0, 1.0), tiles_per_slide=(40, 80), feature_dim=32,
            signal_fraction=0.1, slide_intensity=2.0,
        )  # fmt: skip
    else:
        co = wsimm.testing.make_interaction_cohort(n, family=family, seed=seed)
    d = root / f"{family}_{seed}"
    paths = co.save(d)
    wsimm.bags_to_store(co.bags, d / "s.zarr")
    rows: dict[str, list[float]] = {}
    splits = None
    lin = "cox" if task == "survival" else "logreg"
    key = "c_index" if task == "survival" else "auc"
    for i, name in enumerate(variants):
        t0 = time.perf_counter()
        # without baselines, the rows join another run's on the same cohorts and folds
        want = [BASELINES.format(lin=lin)] if i == 0 and baselines else []
        if VARIANTS[name].get("cross"):  # its own wide part alone (linear fits: cheap)
            want.append(CROSS_BASELINE.format(lin=lin))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            res = train(
                store=str(d / "s.zarr"),
                labels=str(paths["labels"]),
                omics=str(paths["omics"]),
                clinical=str(paths["clinical"]),
                gene_groups=str(paths["gene_groups"]),
                task=task,
                fusion="graph",
                survival_loss="cox",
                folds=5,
                seed=seed,
                fusion_kwargs=VARIANTS[name],
                baselines=",".join(want) or "none",
                out=str(d / f"run{i}"),
                quiet=True,
                threads=1,
            )
        rows[name] = [f[key] for f in res.metrics["folds"]]
        print(f"  {family} seed {seed} {name}: {np.mean(rows[name]):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        for b, v in res.metrics.get("baselines", {}).items():
            own = b == CROSS_BASELINE.format(lin=lin)
            rows[f"{name}: its wide part alone" if own else b] = [f[key] for f in v["folds"]]
            if v.get("failed"):  # a comparator that did not run is no comparison
                raise SystemExit(f"{family} seed {seed}: baseline {b} failed: {v['failed']}")
        if i == 0:
            splits = pd.read_csv(res.out / "splits.csv")
    assert splits is not None
    if task == "survival" and family != "additive":
        rows.update(references(co, splits))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["types", "manifold"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="graph and graph +coattention only")
    ap.add_argument("--task", choices=["survival", "grade"], default="survival")
    ap.add_argument("--json", type=Path, help="write every fold's score here")
    ap.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="the variants only (the folds and cohorts are the same in every run)",
    )
    a = ap.parse_args(argv)
    variants = ["graph", "graph +coattention"] if a.quick else a.variants
    root = Path(tempfile.mkdtemp(prefix="wsimm-bench-fusion-"))
    table: dict[tuple[str, int], dict] = {}
    for fam in a.families:
        for seed in a.seeds:
            table[(fam, seed)] = run_cell(
                fam, seed, a.patients, variants, root, a.task, a.baselines
            )
    if a.json:
        a.json.write_text(json.dumps({f"{f} s{s}": v for (f, s), v in table.items()}, indent=1))
    names = list(next(iter(table.values())))
    cols = [f"{f} s{s}" for f, s in table]
    print(f"\n{'c-index' if a.task == 'survival' else 'AUC'}, mean over 5 folds")
    print("| model | " + " | ".join(cols) + " | mean |")
    print("|---" * (len(cols) + 2) + "|")
    for name in names:
        vals = [np.mean(table[c][name]) for c in table]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
    for n in names:
        if n.startswith("graph +") and "graph" in names:
            gain = np.mean([np.mean(table[c][n]) - np.mean(table[c]["graph"]) for c in table])
            print(f"{n} - graph: {gain:+.3f}")
    # the bar: a switch's margin over every other fusion and the linear models, per cell
    others = [n for n in names if not n.startswith("graph +") and n not in ("true risk",)]
    refs = ("additive Cox", "interaction Cox", "true-shares Cox")
    others = [n for n in others if "Cox:" not in n and n not in refs]
    for n in names:
        if n.startswith("graph +") and others:  # none with --no-baselines
            margins = [
                min(np.mean(table[c][n]) - np.mean(table[c][o]) for o in others if o in table[c])
                for c in table
            ]
            print(f"{n}: smallest margin over {', '.join(others)} per cell: "
                  + " ".join(f"{m:+.3f}" for m in margins))  # fmt: skip


if __name__ == "__main__":
    main()
