"""Graph fusion's switches, on and off, on cohorts whose risk is a slide x omics interaction
(issue 25), beside the baselines and two hand-made references, on the same folds.

Cohorts: :func:`wsimm.testing.make_interaction_cohort`, both independently written families
(``types``: a pathway decides whether type-A or type-B tiles carry the risk; ``manifold``: risk
= pathway x (type-A - type-B share), tiles rendered from a latent tissue state), one slide of
200-400 32-d tiles per patient, ``--patients`` patients, 5 patient-level folds per seed.

Rows (c-index on the test folds, mean over folds; every model picks its epoch on validation
patients only, as ``wsimm train`` does):

* ``graph`` (pooled slide node), ``graph +coattention``, ``graph +contrastive``,
  ``graph +coattention +contrastive``: ``wsimm train --fusion graph`` with
  ``fusion_kwargs`` switches;
* the run's baselines on the same folds: ``late``/``concat``/``kronecker`` fusion, the
  clinical + omics PCA Cox (the wide part alone);
* references computed here on the same folds (penalised Cox, lifelines): ``additive Cox``
  on age, the pathway group's first principal component and 8 principal components of each
  slide's mean tile; ``interaction Cox`` adds those 8 components x the pathway component;
  and the ``true risk``.

    python benchmarks/bench_fusion.py --quick          # one seed of each family, ~20 min here
    python benchmarks/bench_fusion.py --seeds 0 1 2    # the issue's 3 seeds
"""

from __future__ import annotations

import argparse
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
}
BASELINES = "late_fusion,concat_fusion,kronecker_fusion,clinical_omics_pca_cox"


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
    out: dict[str, list[float]] = {"additive Cox": [], "interaction Cox": [], "true risk": []}
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
        t, e = P["time"].to_numpy(), P["event"].to_numpy()
        for name, X in (("additive Cox", add), ("interaction Cox", inter)):
            df = X.assign(T=t, E=e)
            m = CoxPHFitter(penalizer=0.1).fit(df[tr], "T", "E")
            out[name].append(c_index(t[te], e[te], m.predict_partial_hazard(df[te]).to_numpy()))
        out["true risk"].append(c_index(t[te], e[te], P["risk"].to_numpy()[te]))
    return out


def run_cell(family: str, seed: int, n: int, variants: list[str], root: Path) -> dict:
    import torch

    import wsimm
    import wsimm.testing
    from wsimm.errors import WsimmWarning
    from wsimm.train import train

    torch.set_num_threads(1)
    co = wsimm.testing.make_interaction_cohort(n, family=family, seed=seed)
    d = root / f"{family}_{seed}"
    paths = co.save(d)
    wsimm.bags_to_store(co.bags, d / "s.zarr")
    rows: dict[str, list[float]] = {}
    splits = None
    for i, name in enumerate(variants):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            res = train(
                store=str(d / "s.zarr"),
                labels=str(paths["labels"]),
                omics=str(paths["omics"]),
                clinical=str(paths["clinical"]),
                gene_groups=str(paths["gene_groups"]),
                task="survival",
                fusion="graph",
                survival_loss="cox",
                folds=5,
                seed=seed,
                fusion_kwargs=VARIANTS[name],
                baselines=BASELINES if i == 0 else "none",
                out=str(d / f"run{i}"),
                quiet=True,
                threads=1,
            )
        rows[name] = [f["c_index"] for f in res.metrics["folds"]]
        print(f"  {family} seed {seed} {name}: {np.mean(rows[name]):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        if i == 0:
            for b, v in res.metrics.get("baselines", {}).items():
                rows[b] = [f["c_index"] for f in v["folds"]]
            splits = pd.read_csv(res.out / "splits.csv")
    assert splits is not None
    rows.update(references(co, splits))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["types", "manifold"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="graph and graph +coattention only")
    a = ap.parse_args(argv)
    variants = ["graph", "graph +coattention"] if a.quick else a.variants
    root = Path(tempfile.mkdtemp(prefix="wsimm-bench-fusion-"))
    table: dict[tuple[str, int], dict] = {}
    for fam in a.families:
        for seed in a.seeds:
            table[(fam, seed)] = run_cell(fam, seed, a.patients, variants, root)
    names = list(next(iter(table.values())))
    cols = [f"{f} s{s}" for f, s in table]
    print("\nc-index, mean over 5 folds")
    print("| model | " + " | ".join(cols) + " | mean |")
    print("|---" * (len(cols) + 2) + "|")
    for name in names:
        vals = [np.mean(table[c][name]) for c in table]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
    for n in names:
        if n.startswith("graph +") and "graph" in names:
            gain = np.mean([np.mean(table[c][n]) - np.mean(table[c]["graph"]) for c in table])
            print(f"{n} - graph: {gain:+.3f}")


if __name__ == "__main__":
    main()
