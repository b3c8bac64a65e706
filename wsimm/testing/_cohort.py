"""Synthetic multi-modal cohorts with known ground truth.

Each patient has three latent factors, one per modality: ``z_slide`` (carried by a small
fraction of the tiles of their slides), ``z_omics`` (carried by the expression, copy number and
mutations of a few gene groups) and ``z_clinical`` (carried by age and stage). The true risk is
their weighted sum; survival times, censoring and grades are drawn from it. Models can therefore
be checked against the true risk, and fusion against each single modality.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError
from wsimm.testing._outcome import Cohort, grades_from_risk, survival_times

__all__ = ["Cohort", "make_cohort"]


def make_cohort(
    n_patients: int = 200,
    *,
    seed: int = 0,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_grades: int = 3,
    slides: str | None = "bags",
    slide_dir: str | os.PathLike[str] | None = None,
    feature_dim: int = 64,
    tiles_per_slide: tuple[int, int] = (200, 600),
    signal_fraction: float = 0.05,
    signal_strength: float = 3.0,
    slide_nuisance: float = 0.5,
    slide_intensity: float = 0.0,
    p_no_slide: float = 0.1,
    p_multi_slide: float = 0.25,
    p_no_omics: float = 0.1,
    n_gene_groups: int = 6,
    genes_per_group: int = 15,
    censoring: float = 0.4,
    slide_size: tuple[int, int] = (3072, 2304),
    slide_mpp: float = 0.5,
    interaction: str | None = None,
    noisy: str | None = None,
    p_noisy: float = 0.3,
    noise_scale: float = 3.0,
) -> Cohort:
    """Make a deterministic synthetic cohort whose outcome signal is split across modalities.

    Parameters
    ----------
    n_patients
        Number of patients.
    weights
        Weights of the slide, omics and clinical latent factors in the true risk.
    n_grades
        Number of grade classes (0 .. n_grades-1), cut from the risk at equal quantiles with
        noise.
    slides
        ``"bags"`` for ready-made feature bags, ``"files"`` to write synthetic slide files to
        ``slide_dir`` (tumour area grows with ``z_slide``), or ``None`` for no slides at all.
    feature_dim, tiles_per_slide, signal_fraction, signal_strength, slide_nuisance
        Feature bags: tiles are standard normal; a patient's signal tiles (on average
        ``signal_fraction`` of a slide, more for higher ``z_slide``) are shifted by
        ``signal_strength`` along a fixed direction; every slide also gets a random offset of
        scale ``slide_nuisance`` (stain/scanner batch effect), which hurts mean pooling more
        than attention. With ``slide_intensity``, signal tiles are also shifted by
        ``slide_intensity * z_slide`` along a second fixed direction (tumour morphology that
        tracks the risk), so a slide carries its patient's risk and not only a noisy count.
    p_no_slide, p_multi_slide, p_no_omics
        Missing and repeated modalities.
    censoring
        Target fraction of censored patients.
    interaction
        ``"types"`` or ``"manifold"``: instead, a cohort whose risk is an interaction of a
        pathway and tile types (:func:`wsimm.testing.make_interaction_cohort`, given
        ``n_patients``, ``seed``, ``n_grades``, ``feature_dim``, ``tiles_per_slide``,
        ``censoring``, ``p_no_slide`` and ``p_no_omics``; slides as bags).
    noisy, p_noisy, noise_scale
        ``"omics"`` or ``"slides"``: a noisy-modality cohort. For a random ``p_noisy`` of the
        patients that modality was measured badly: their omics lose their signal (a
        contaminated or degraded sample: expression and copy number are noise of
        ``noise_scale`` times the usual spread, half of it shared by the genes of a group,
        mutations are called at random), or their slides' tiles are buried under
        artefact noise of ``noise_scale`` times the usual spread (out of focus, pen, folds)
        that hides the signal tiles. ``patients["noisy"]`` marks them. The outcome is
        unchanged, so a model that trusts the bad modality as much as the good ones scores
        those patients worse.
    """
    if interaction is not None:
        from wsimm.testing._interaction import make_interaction_cohort

        return make_interaction_cohort(
            n_patients,
            family=interaction,
            seed=seed,
            n_grades=n_grades,
            feature_dim=feature_dim,
            tiles_per_slide=tiles_per_slide,
            censoring=censoring,
            p_no_slide=p_no_slide,
            p_no_omics=p_no_omics,
        )
    if n_patients < 4:
        raise ConfigError(f"make_cohort needs at least 4 patients, got {n_patients}")
    if noisy not in (None, "omics", "slides"):
        raise ConfigError(f"noisy must be 'omics', 'slides' or None, got {noisy!r}")
    if not 0 <= p_noisy <= 1 or noise_scale <= 0:
        raise ConfigError("p_noisy must be in [0, 1] and noise_scale > 0")
    if slides not in ("bags", "files", None):
        raise ConfigError(f"slides must be 'bags', 'files' or None, got {slides!r}")
    if slides == "files" and slide_dir is None:
        raise ConfigError("make_cohort(slides='files') needs slide_dir")
    rng = np.random.default_rng(seed)
    n = n_patients
    pids = [f"P{i:04d}" for i in range(n)]
    z = rng.standard_normal((n, 3))
    w = np.asarray(weights, np.float64)
    risk = z @ w

    time, event = survival_times(rng, risk, censoring)
    grade = grades_from_risk(rng, risk, n_grades)

    # clinical: age and stage carry z_clinical; sex is noise
    zc = z[:, 2]
    age = np.round(62 + 8 * zc + rng.normal(0, 4, n)).astype(int)
    stage_score = zc + rng.normal(0, 0.5, n)
    stage = np.array(["I", "II", "III", "IV"])[
        np.searchsorted(np.quantile(stage_score, [0.25, 0.5, 0.75]), stage_score)
    ]
    clinical = pd.DataFrame(
        {
            "patient_id": pids,
            "age": age,
            "sex": rng.choice(["female", "male"], n),
            "stage": stage,
        }
    )

    # omics: two signal groups per assay direction, the rest noise
    groups = [f"GROUP{g + 1}" for g in range(n_gene_groups)]
    gene_groups: dict[str, list[str]] = {}
    gi = 0
    for g in groups:
        gene_groups[g] = [f"G{gi + k:04d}" for k in range(genes_per_group)]
        gi += genes_per_group - 2  # neighbouring groups share two genes
    genes = sorted({x for v in gene_groups.values() for x in v})
    signal_genes = set(gene_groups[groups[0]]) | set(gene_groups[groups[1 % n_gene_groups]])
    zo = z[:, 1]
    cols: dict[str, np.ndarray] = {}
    for gname in genes:
        loading = rng.uniform(0.6, 1.0) * rng.choice([-1, 1]) if gname in signal_genes else 0.0
        cols[f"{gname}_rnaseq"] = loading * zo + rng.normal(0, 1, n)
        cols[f"{gname}_cnv"] = np.round(0.5 * loading * zo + rng.normal(0, 0.7, n)).clip(-2, 2)
        p = 1 / (1 + np.exp(-(-2.5 + 1.2 * abs(loading) * zo)))
        cols[f"{gname}_mut"] = (rng.uniform(size=n) < p).astype(float)
    # a separate stream, so that the clean cohort of the same seed is unchanged
    noise_rng = np.random.default_rng([seed, 7907])
    bad = noise_rng.uniform(size=n) < (p_noisy if noisy else 0.0)
    if noisy == "omics" and bad.any():
        # a bad sample (contaminated, degraded): each gene group of each assay is off by a
        # shared amount, each gene by its own, and the tumour's signal is gone
        k = int(bad.sum())
        home = {x: g for g in reversed(groups) for x in gene_groups[g]}
        offset = {(g, a): noise_rng.standard_normal(k) for g in groups for a in ("rnaseq", "cnv")}
        for c in cols:
            gene, assay = c.rsplit("_", 1)
            cols[c] = cols[c].copy()
            if assay == "mut":
                cols[c][bad] = (noise_rng.uniform(size=k) < 0.5).astype(float)
                continue
            spread = float(np.std(cols[c])) or 1.0
            e = (offset[home[gene], assay] + noise_rng.standard_normal(k)) / math.sqrt(2)
            cols[c][bad] = noise_scale * spread * e
    omics_all = pd.DataFrame(cols, index=pd.Index(pids, name="patient_id"))
    has_omics = rng.uniform(size=n) >= p_no_omics
    omics = omics_all.loc[has_omics].astype(np.float32)

    # slides
    n_slides = np.where(
        rng.uniform(size=n) < p_no_slide,
        0,
        np.where(rng.uniform(size=n) < p_multi_slide, rng.integers(2, 4, n), 1),
    )
    if slides is None:
        n_slides[:] = 0
    direction = rng.standard_normal(feature_dim)
    direction /= np.linalg.norm(direction)
    second = rng.standard_normal(feature_dim) if slide_intensity else np.zeros(feature_dim)
    second -= (second @ direction) * direction
    second /= max(float(np.linalg.norm(second)), 1e-12)
    zs = z[:, 0]
    strength = 2 * _norm_cdf(zs)  # 0..2, mean 1
    rows = []
    bags: dict[str, np.ndarray] = {}
    tile_signal: dict[str, np.ndarray] = {}
    slide_paths: dict[str, Path] = {}
    for i, pid in enumerate(pids):
        if n_slides[i] == 0:
            rows.append((pid, "", grade[i], time[i], int(event[i])))
            continue
        for k in range(n_slides[i]):
            sid = f"{pid}-S{k + 1}"
            rows.append((pid, sid, grade[i], time[i], int(event[i])))
            if slides == "bags":
                nt = int(rng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
                frac = min(1.0, signal_fraction * strength[i])
                sig = rng.uniform(size=nt) < frac
                x = rng.standard_normal((nt, feature_dim))
                x += slide_nuisance * rng.standard_normal(feature_dim)
                x[sig] += signal_strength * direction + slide_intensity * zs[i] * second
                if noisy == "slides" and bad[i]:
                    x += noise_scale * noise_rng.standard_normal(x.shape)
                bags[sid] = x.astype(np.float16)
                tile_signal[sid] = sig
            elif slides == "files":
                from wsimm.testing._slide import write_synthetic_slide

                assert slide_dir is not None
                p = Path(slide_dir) / f"{sid}.svs"
                write_synthetic_slide(
                    p,
                    width=slide_size[0],
                    height=slide_size[1],
                    seed=seed * 100003 + i * 7 + k,
                    mpp=slide_mpp,
                    tumour_fraction=float(np.clip(0.05 + 0.25 * strength[i], 0.02, 0.6)),
                )
                slide_paths[sid] = p
    labels = pd.DataFrame(rows, columns=["patient_id", "slide_id", "grade", "time", "event"])
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "z_slide": zs,
            "z_omics": zo,
            "z_clinical": zc,
            "risk": risk,
            "grade": grade,
            "time": time,
            "event": event.astype(int),
            "n_slides": n_slides,
            "has_omics": has_omics,
            "noisy": bad,
        }
    )
    return Cohort(
        labels=labels,
        patients=patients,
        clinical=clinical,
        omics=omics,
        gene_groups=gene_groups,
        bags=bags,
        tile_signal=tile_signal,
        slide_paths=slide_paths,
        seed=seed,
    )


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
