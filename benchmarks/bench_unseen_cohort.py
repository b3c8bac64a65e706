"""Graph fusion as a user runs it, on an interaction cohort that wsimm's own generators did not
make (issue 25: "a reviewer runs wsimm on cohorts you have not seen").

The cohort is written here, apart from :mod:`wsimm.testing`, from the issue's description
only (300 patients, one slide of 200-400 32-d tiles each, a pathway's level decides whether
type-A or type-B tiles carry the risk, age adds a little), with choices neither
``make_interaction_cohort`` family makes:

* tiles: six tissue types, each an anisotropic Gaussian (a rank-3 covariance plus a diagonal);
  type B sits 2 units from type A; a strong per-slide stain (a gain per feature, lognormal
  sd 0.2, and an offset per feature, sd 0.6); type shares skewed small (Beta(1.5, 8));
* risk: a hard switch, ``1.3 * (zA if pathway > 0 else zB) + 0.35 * age_z + 0.3 * stage IV``;
* omics: 160 genes of log2 expression (gene means 2-9), the pathway behind 15 of them, a decoy
  factor of the same size behind 15 others, eight overlapping gene groups (the pathway's group
  also holds four noise genes), 10% of patients without omics;
* survival: Weibull times in whole months (many ties), uniform 12-120 month follow-up;
  grades: risk plus noise cut at the risk's terciles; a clinical column that is noise.

Per seed, on the same 5 folds: ``wsimm train --fusion graph`` with its defaults (the pooled
slide node; default baselines), and with ``fusion_kwargs: {cross: true, cross_prototypes:
[none, 0, 16], coattention: true}`` beside ``clinical_omics_slide_cross_*`` (its wide part
alone); the true risk's c-index on the same test folds (survival).

    python benchmarks/bench_unseen_cohort.py --seeds 0 1 2                # ~1 h here, one thread
    python benchmarks/bench_unseen_cohort.py --seeds 0 1 2 --task grade   # AUC
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SWITCHES = {"cross": True, "cross_prototypes": ["none", 0, 16], "coattention": True}


def make_cohort(seed: int, out: Path, n: int = 300, dim: int = 32) -> pd.DataFrame:
    """Write the cohort's tables and feature store under ``out``; return the truth table."""
    import wsimm

    rng = np.random.default_rng([seed, 4242])
    n_types = 6
    centres = rng.normal(0, 1.2, (n_types, dim))
    step = rng.standard_normal(dim)
    centres[1] = centres[0] + 2.0 * step / np.linalg.norm(step)  # type B close to type A
    chol = []
    for _ in range(n_types):
        low = rng.normal(0, 0.5, (dim, 3))
        chol.append(np.linalg.cholesky(low @ low.T + np.diag(rng.uniform(0.4, 1.0, dim))))
    chol_all = np.stack(chol)
    share_a, share_b = rng.beta(1.5, 8, n), rng.beta(1.5, 8, n)
    pids = [f"R{i:04d}" for i in range(n)]
    bags, fa, fb = {}, [], []
    for i, pid in enumerate(pids):
        nt = int(rng.integers(200, 401))
        rest = rng.dirichlet(np.ones(n_types - 2)) * max(0.05, 1 - share_a[i] - share_b[i])
        p = np.concatenate([[share_a[i], share_b[i]], rest])
        t = rng.choice(n_types, size=nt, p=p / p.sum())
        x = centres[t] + np.einsum("nij,nj->ni", chol_all[t], rng.standard_normal((nt, dim)))
        x = x * rng.lognormal(0, 0.2, dim) + rng.normal(0, 0.6, dim)  # the slide's stain
        bags[f"{pid}-A"] = x.astype(np.float16)
        fa.append(np.mean(t == 0))
        fb.append(np.mean(t == 1))
    fa, fb = np.array(fa), np.array(fb)
    za, zb = (fa - fa.mean()) / fa.std(), (fb - fb.mean()) / fb.std()
    pathway = rng.standard_normal(n)
    age = rng.normal(64, 10, n).round()
    stage = rng.choice(["I", "II", "III", "IV"], n, p=[0.3, 0.3, 0.25, 0.15])
    risk = 1.3 * np.where(pathway > 0, za, zb) + 0.35 * (age - 64) / 10 + 0.3 * (stage == "IV")
    t_event = 30 * (-np.log(rng.uniform(size=n)) / np.exp(risk)) ** (1 / 1.3)
    follow = rng.uniform(12, 120, n)
    months = np.ceil(np.minimum(t_event, follow)).astype(int)
    event = (t_event <= follow).astype(int)
    grade = np.digitize(risk + rng.normal(0, 0.5, n), np.quantile(risk, [1 / 3, 2 / 3]))
    genes = [f"GENE{k:03d}" for k in range(160)]
    expr = rng.uniform(2, 9, 160) + rng.normal(0, 0.7, (n, 160))
    load = np.zeros(160)
    load[:15] = rng.uniform(0.6, 1.2, 15) * rng.choice([-1, 1], 15)
    decoy_load = np.zeros(160)
    decoy_load[15:30] = 0.9
    expr += np.outer(pathway, load) + np.outer(rng.standard_normal(n), decoy_load)
    groups = {"IMMUNE": genes[:15] + genes[40:44], "DECOY_SIG": genes[15:30] + genes[:3]}
    for g in range(6):
        groups[f"SET{g}"] = list(rng.choice(genes[30:], 20, replace=False))
    has_omics = rng.uniform(size=n) > 0.1
    out.mkdir(parents=True, exist_ok=True)
    omics = pd.DataFrame(expr, columns=[f"{g}_rnaseq" for g in genes], index=pids)
    omics.loc[has_omics].to_csv(out / "omics.csv", index_label="patient_id")
    pd.DataFrame(
        {
            "patient_id": pids,
            "age": age,
            "stage": stage,
            "site": rng.choice(["TSS-A", "TSS-B", "TSS-C"], n),
        }
    ).to_csv(out / "clinical.csv", index=False)
    pd.DataFrame(
        {
            "patient_id": pids,
            "slide_id": [f"{p}-A" for p in pids],
            "grade": grade,
            "time": months,
            "event": event,
        }
    ).to_csv(out / "labels.csv", index=False)
    rows = [(g, gene) for g, members in groups.items() for gene in members]
    pd.DataFrame(rows, columns=["group", "gene"]).to_csv(out / "gene_groups.csv", index=False)
    wsimm.bags_to_store(bags, out / "s.zarr")
    return pd.DataFrame({"patient_id": pids, "risk": risk}).set_index("patient_id")


def run_seed(seed: int, task: str, root: Path, n: int = 300) -> dict[str, float]:
    from wsimm.errors import WsimmWarning
    from wsimm.survival import c_index
    from wsimm.train import train

    d = root / f"seed_{seed}"
    truth = make_cohort(seed, d, n)
    key = "c_index" if task == "survival" else "auc"
    lin = "cox" if task == "survival" else "logreg"
    common = dict(
        store=str(d / "s.zarr"), labels=str(d / "labels.csv"), omics=str(d / "omics.csv"),
        clinical=str(d / "clinical.csv"), gene_groups=str(d / "gene_groups.csv"), task=task,
        fusion="graph", folds=5, quiet=True, threads=1,
    )  # fmt: skip
    rows: dict[str, float] = {}
    for name, extra in (
        ("graph fusion, defaults", {}),
        (
            "graph +cross[none,0,16] +coattention",
            {"fusion_kwargs": SWITCHES, "baselines": f"clinical_omics_slide_cross_{lin}"},
        ),
    ):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WsimmWarning)
            res = train(**common, **extra, out=str(d / f"run_{len(rows)}"))
        m = res.metrics
        rows[name] = m["mean"][key]
        for b, v in (m.get("baselines") or {}).items():
            rows.setdefault(f"  {b}", v["mean"][key])
        if extra:
            forms = [f.get("cross_prototypes") for f in m["folds"]]
            print(f"  seed {seed}: cross forms chosen per fold {forms}", flush=True)
        print(f"  seed {seed} {name}: {rows[name]:.3f} ({time.perf_counter() - t0:.0f} s)")
        if task == "survival" and "true risk" not in rows:
            pred = res.predictions
            rows["true risk"] = float(
                np.mean(
                    [
                        c_index(g["time"].to_numpy(), g["event"].to_numpy(),
                                truth.loc[g["patient_id"].astype(str), "risk"].to_numpy())
                        for _, g in pred.groupby("fold")
                    ]
                )
            )  # fmt: skip
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--task", choices=["survival", "grade"], default="survival")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--root", help="keep the cohorts and runs here (default: a temp folder)")
    a = ap.parse_args(argv)
    root = Path(a.root or tempfile.mkdtemp(prefix="wsimm-bench-unseen-"))
    per_seed = {s: run_seed(s, a.task, root, a.patients) for s in a.seeds}
    names = list(dict.fromkeys(k for r in per_seed.values() for k in r))
    key = "c-index" if a.task == "survival" else "AUC"
    print(f"\n{key}, mean over 5 folds, seeds {' / '.join(map(str, a.seeds))} (mean); {root}")
    for name in names:
        vals = [per_seed[s].get(name, np.nan) for s in a.seeds]
        cells = " / ".join(f"{v:.3f}" for v in vals)
        print(f"{name:45s} {cells} ({np.nanmean(vals):.3f})")
    switched = "graph +cross[none,0,16] +coattention"
    own = f"  clinical_omics_slide_cross_{'cox' if a.task == 'survival' else 'logreg'}"
    others = [n for n in names if n not in (switched, own, "true risk")]
    for s in a.seeds:
        r = per_seed[s]
        best = max(others, key=lambda n: r.get(n, -np.inf))
        print(f"seed {s}: {switched} - best other ({best.strip()}) = "
              f"{r[switched] - r[best]:+.3f}; - its own wide part alone = "
              f"{r[switched] - r.get(own, np.nan):+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
