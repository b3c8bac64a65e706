"""What every synthetic multi-modal cohort shares: the :class:`Cohort` container and the
outcome draws (survival times with censoring, grades cut from a risk)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ASSAYS", "Cohort", "grades_from_risk", "survival_times"]

ASSAYS = ("rnaseq", "cnv", "mut")


@dataclass
class Cohort:
    """A synthetic cohort.

    Attributes
    ----------
    labels
        One row per slide (``patient_id``, ``slide_id``, ``grade``, ``time``, ``event``); a
        patient without slides has one row with an empty ``slide_id``. ``event = 1`` means the
        event was observed.
    patients
        One row per patient with the ground truth: latent factors, ``risk``, ``grade``,
        ``time``, ``event``, ``has_slide``, ``has_omics``.
    clinical
        ``patient_id``, ``age`` (numeric), ``sex`` and ``stage`` (categorical).
    omics
        Wide table, one row per patient with omics, columns ``<GENE>_<assay>``.
    gene_groups
        Group name -> gene names.
    bags
        Slide id -> ``(n_tiles, feature_dim)`` float16 features (``slides="bags"``).
    tile_signal
        Slide id -> boolean per tile, True where the tile carries the slide signal.
    slide_paths
        Slide id -> written slide file (``slides="files"``).
    tile_type
        Slide id -> tile type per tile (interaction cohorts: 0 other, 1 type A, 2 type B).
    """

    labels: pd.DataFrame
    patients: pd.DataFrame
    clinical: pd.DataFrame
    omics: pd.DataFrame
    gene_groups: dict[str, list[str]]
    bags: dict[str, np.ndarray] = field(default_factory=dict)
    tile_signal: dict[str, np.ndarray] = field(default_factory=dict)
    slide_paths: dict[str, Path] = field(default_factory=dict)
    seed: int = 0
    tile_type: dict[str, np.ndarray] = field(default_factory=dict)

    def omics_anndata(self) -> Any:
        """The omics as an AnnData (obs = patients, var = genes of one assay, one layer per
        assay; ``X`` is the expression). Needs ``anndata``."""
        try:
            import anndata as ad
        except ImportError as e:  # pragma: no cover - environment dependent
            from wsimm.errors import MissingDependencyError

            raise MissingDependencyError("anndata", extra="scanpy", feature="omics AnnData") from e
        genes = sorted({c.rsplit("_", 1)[0] for c in self.omics.columns})
        obs = pd.DataFrame(index=self.omics.index.astype(str))
        obs.index.name = "patient_id"
        layers = {a: self.omics[[f"{g}_{a}" for g in genes]].to_numpy(np.float32) for a in ASSAYS}
        var = pd.DataFrame(index=genes)
        var["group"] = [",".join(k for k, v in self.gene_groups.items() if g in v) for g in genes]
        return ad.AnnData(X=layers["rnaseq"].copy(), obs=obs, var=var, layers=layers)

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write the tables (``labels.csv``, ``clinical.csv``, ``omics.csv``,
        ``gene_groups.csv``, ``truth.csv``, and ``omics.h5ad`` when anndata is installed);
        return name -> path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = {
            "labels": d / "labels.csv",
            "clinical": d / "clinical.csv",
            "omics": d / "omics.csv",
            "gene_groups": d / "gene_groups.csv",
            "truth": d / "truth.csv",
        }
        self.labels.to_csv(out["labels"], index=False)
        self.clinical.to_csv(out["clinical"], index=False)
        self.omics.to_csv(out["omics"], index_label="patient_id")
        rows = [(g, gene) for g, genes in self.gene_groups.items() for gene in genes]
        pd.DataFrame(rows, columns=["group", "gene"]).to_csv(out["gene_groups"], index=False)
        self.patients.to_csv(out["truth"], index=False)
        try:
            import anndata  # noqa: F401
        except ImportError:
            return out
        out["omics_h5ad"] = d / "omics.h5ad"
        self.omics_anndata().write_h5ad(out["omics_h5ad"])
        return out


def survival_times(
    rng: np.random.Generator, risk: np.ndarray, censoring: float
) -> tuple[np.ndarray, np.ndarray]:
    """Times (months, 2 decimals) and event flags: exponential with hazard ``exp(risk) / 30``,
    uniform censoring whose horizon is bisected for a ``censoring`` fraction censored."""
    n = len(risk)
    base = 1.0 / 30.0  # months
    t_event = rng.exponential(1.0 / (base * np.exp(risk)))
    event = np.ones(n, bool)
    if censoring > 0:
        lo, hi = 1e-3, float(np.quantile(t_event, 0.999)) * 50
        u = rng.uniform(size=n)
        for _ in range(60):  # bisect the censoring horizon for the target rate
            mid = (lo + hi) / 2
            if np.mean(u * mid < t_event) > censoring:
                lo = mid
            else:
                hi = mid
        c = u * hi
        event = t_event <= c
        time = np.minimum(t_event, c)
    else:
        time = t_event
    return np.round(np.maximum(time, 0.05), 2), event


def grades_from_risk(rng: np.random.Generator, risk: np.ndarray, n_grades: int) -> np.ndarray:
    """Grades 0 .. n_grades-1 cut at equal quantiles of the risk plus noise (sd 0.3 x the
    risk's)."""
    noisy = risk + rng.normal(0, 0.3 * np.std(risk), len(risk))
    cuts = np.quantile(noisy, np.linspace(0, 1, n_grades + 1)[1:-1])
    return np.searchsorted(cuts, noisy)
