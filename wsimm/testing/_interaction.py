"""Cohorts where slides and omics interact: which tiles carry the risk depends on the omics.

In :func:`make_cohort` every modality adds its own term to the risk, so a model of pooled slide
features plus omics can in principle reach the true risk. Here no additive model can: a
pathway's level decides *which kind of tile* matters. Two families, written independently so
that a fusion recipe is not tuned to one generator:

``"types"``
    Tiles are drawn around ``n_types`` tissue-type prototypes (a per-slide Dirichlet mixture,
    isotropic noise, a per-slide stain offset). Type A and type B fractions vary from patient
    to patient; with ``g = sigmoid(3 * pathway)`` the risk is
    ``g * zA + (1 - g) * zB`` (``zA``, ``zB`` the standardised fractions) plus a little age:
    a high pathway makes type-A tiles dangerous, a low one type-B tiles.
``"manifold"``
    Tiles are rendered from a 5-d latent tissue state through a fixed random two-layer tanh
    network, with a per-slide multiplicative stain. Type A and B are regions of the latent space
    (``u1 > 1`` and ``u2 > 1``) whose share moves with a per-patient shift of the latent mean.
    The pathway is a factor behind a gene group's expression and copy number, and the risk is a
    product, ``pathway * (zA - zB)``, plus age: there is no main effect of either modality.

Both carry the truth per patient (``risk``, ``pathway``, ``frac_a``, ``frac_b``) and per tile
(``tile_type``: 0 other, 1 type A, 2 type B, in ``Cohort.tile_signal`` as ``tile_type > 0``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError
from wsimm.testing._outcome import Cohort, grades_from_risk, survival_times

__all__ = ["make_interaction_cohort"]

FAMILIES = ("types", "manifold")


def make_interaction_cohort(
    n_patients: int = 300,
    *,
    family: str = "types",
    seed: int = 0,
    feature_dim: int = 32,
    tiles_per_slide: tuple[int, int] = (200, 400),
    n_gene_groups: int = 6,
    genes_per_group: int = 12,
    age_weight: float = 0.3,
    risk_scale: float = 1.5,
    n_grades: int = 3,
    censoring: float = 0.3,
    p_no_omics: float = 0.0,
    p_no_slide: float = 0.0,
) -> Cohort:
    """A cohort whose risk is an interaction of a pathway (omics) and tile types (slides).

    Parameters
    ----------
    family
        ``"types"`` (prototype tissue types, risk switched by the pathway) or ``"manifold"``
        (nonlinear latent tissue, risk = pathway x tile-type balance); see the module notes.
    risk_scale
        Multiplies the interaction term of the risk (before age is added).
    age_weight
        Weight of standardised age in the risk (the small additive part).
    p_no_omics, p_no_slide
        Patients without omics / without a slide (never both).
    """
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if n_patients < 4:
        raise ConfigError(f"make_interaction_cohort needs at least 4 patients, got {n_patients}")
    rng = np.random.default_rng([seed, FAMILIES.index(family), 7])
    n = n_patients
    pids = [f"P{i:04d}" for i in range(n)]
    pathway = rng.standard_normal(n)
    age_z = rng.standard_normal(n)
    draw = _types_tiles if family == "types" else _manifold_tiles
    bags, kinds, frac_a, frac_b = draw(rng, n, feature_dim, tiles_per_slide)
    za = (frac_a - frac_a.mean()) / frac_a.std()
    zb = (frac_b - frac_b.mean()) / frac_b.std()
    if family == "types":
        g = 1.0 / (1.0 + np.exp(-3.0 * pathway))
        inter = g * za + (1 - g) * zb
    else:
        inter = pathway * (za - zb) / np.sqrt(2)
    risk = risk_scale * inter + age_weight * age_z
    time, event = survival_times(rng, risk, censoring)
    grade = grades_from_risk(rng, risk, n_grades)

    omics, gene_groups = _omics(rng, pathway, n_gene_groups, genes_per_group, family)
    omics.index = pd.Index(pids, name="patient_id")
    no_slide = rng.uniform(size=n) < p_no_slide
    no_omics = (rng.uniform(size=n) < p_no_omics) & ~no_slide
    omics = omics.loc[~no_omics].astype(np.float32)
    clinical = pd.DataFrame(
        {
            "patient_id": pids,
            "age": np.round(62 + 9 * age_z + rng.normal(0, 1.5, n)).astype(int),
            "sex": rng.choice(["female", "male"], n),
            "stage": rng.choice(["I", "II", "III"], n),  # noise: no part in the risk
        }
    )
    rows, out_bags, signal = [], {}, {}
    for i, pid in enumerate(pids):
        sid = "" if no_slide[i] else f"{pid}-S1"
        rows.append((pid, sid, grade[i], time[i], int(event[i])))
        if sid:
            out_bags[sid] = bags[i].astype(np.float16)
            signal[sid] = kinds[i] > 0
    labels = pd.DataFrame(rows, columns=["patient_id", "slide_id", "grade", "time", "event"])
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "pathway": pathway,
            "frac_a": frac_a,
            "frac_b": frac_b,
            "age_z": age_z,
            "risk": risk,
            "grade": grade,
            "time": time,
            "event": event.astype(int),
            "n_slides": (~no_slide).astype(int),
            "has_omics": ~no_omics,
        }
    )
    types = {f"{pid}-S1": kinds[i] for i, pid in enumerate(pids) if not no_slide[i]}
    return Cohort(
        labels, patients, clinical, omics, gene_groups, out_bags, signal, seed=seed, tile_type=types
    )


def _types_tiles(rng, n: int, dim: int, sizes: tuple[int, int]):
    """Prototype tissue types; type A = prototype 0, type B = prototype 1."""
    n_types = 8
    protos = rng.standard_normal((n_types, dim)) * 1.6
    bags, kinds = [], []
    frac_a = rng.uniform(0.02, 0.30, n)
    frac_b = rng.uniform(0.02, 0.30, n)
    for i in range(n):
        nt = int(rng.integers(sizes[0], sizes[1] + 1))
        rest = rng.dirichlet(np.full(n_types - 2, 0.7)) * (1 - frac_a[i] - frac_b[i])
        p = np.concatenate([[frac_a[i], frac_b[i]], rest])
        t = rng.choice(n_types, size=nt, p=p / p.sum())
        x = protos[t] + rng.standard_normal((nt, dim)) + 0.4 * rng.standard_normal(dim)
        bags.append(x)
        kinds.append(np.where(t == 0, 1, np.where(t == 1, 2, 0)).astype(np.int8))
    # the realised fractions, not the drawn ones, are what a model can see
    fa = np.array([np.mean(k == 1) for k in kinds])
    fb = np.array([np.mean(k == 2) for k in kinds])
    return bags, kinds, fa, fb


def _manifold_tiles(rng, n: int, dim: int, sizes: tuple[int, int]):
    """Latent tissue state -> fixed random tanh network; type A/B = latent regions."""
    latent = 5
    w1 = rng.standard_normal((latent, 48)) / np.sqrt(latent) * 1.5
    b1 = rng.normal(0, 0.3, 48)
    w2 = rng.standard_normal((48, dim)) / np.sqrt(48) * 2.0
    bags, kinds = [], []
    for _ in range(n):
        nt = int(np.clip(rng.lognormal(np.log(np.mean(sizes)), 0.25), sizes[0], sizes[1]))
        shift = np.zeros(latent)
        shift[:2] = rng.normal(0, 0.45, 2)  # moves the share of the A and B regions
        u = rng.standard_normal((nt, latent)) + shift
        x = np.tanh(u @ w1 + b1) @ w2
        x = x * rng.lognormal(0, 0.15) + 0.3 * rng.standard_normal(dim)  # stain gain, offset
        x += 0.5 * rng.standard_normal((nt, dim))
        a, b = u[:, 0] > 1.0, u[:, 1] > 1.0
        kinds.append(np.where(a & ~b, 1, np.where(b & ~a, 2, 0)).astype(np.int8))
        bags.append(x)
    fa = np.array([np.mean(k == 1) for k in kinds])
    fb = np.array([np.mean(k == 2) for k in kinds])
    return bags, kinds, fa, fb


def _omics(rng, pathway: np.ndarray, n_groups: int, per_group: int, family: str):
    """Gene groups; the first (``PATHWAY``) carries the pathway, a second (``DECOY``) an
    unrelated factor of the same strength, the rest noise."""
    n = len(pathway)
    names = ["PATHWAY", "DECOY", *[f"GROUP{g + 3}" for g in range(max(0, n_groups - 2))]]
    decoy = rng.standard_normal(n)
    groups: dict[str, list[str]] = {}
    cols: dict[str, np.ndarray] = {}
    gi = 0
    for gname in names:
        genes = [f"G{gi + k:04d}" for k in range(per_group)]
        gi += per_group
        groups[gname] = genes
        factor = pathway if gname == "PATHWAY" else decoy if gname == "DECOY" else None
        for gene in genes:
            load = 0.0 if factor is None else rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
            f = 0.0 if factor is None else load * factor
            noise = 0.8 if family == "types" else 1.0
            cols[f"{gene}_rnaseq"] = f + rng.normal(0, noise, n)
            cols[f"{gene}_cnv"] = np.round(0.4 * f + rng.normal(0, 0.7, n)).clip(-2, 2)
            pm = 1 / (1 + np.exp(-(-2.5 + (abs(load) * factor if factor is not None else 0))))
            cols[f"{gene}_mut"] = (rng.uniform(size=n) < pm).astype(float)
    return pd.DataFrame(cols), groups
