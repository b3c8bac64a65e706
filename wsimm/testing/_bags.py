"""Synthetic MIL cohorts (feature bags with a known witness set) and writing bags to a store.

``make_mil_cohort`` is the bag-level test bed for ``wsimm.mil`` and ``wsimm.train``: a small
fraction of each slide's tiles ("tumour" tiles) sits along a fixed direction; for grading, only
positive slides have them; for survival, every slide has them and their position along a second
direction is the patient's true risk. Every slide also gets a random offset (scanner/stain batch
effect). Attention pooling can find the few tumour tiles and read them; mean pooling dilutes them
in the slide's many normal tiles and the batch effect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError

__all__ = ["MILCohort", "bags_to_store", "grid_coords", "make_mil_cohort"]


@dataclass
class MILCohort:
    """A synthetic MIL cohort.

    Attributes
    ----------
    labels
        One row per slide: ``patient_id``, ``slide_id``, ``grade`` (0/1), ``time``, ``event``
        (1 = observed).
    patients
        One row per patient with the truth: ``risk`` (survival), ``grade``, ``time``, ``event``.
    bags
        Slide id -> ``(n_tiles, feature_dim)`` float16.
    tile_signal
        Slide id -> boolean per tile, True on the tumour (witness) tiles.
    """

    labels: pd.DataFrame
    patients: pd.DataFrame
    bags: dict[str, np.ndarray] = field(default_factory=dict)
    tile_signal: dict[str, np.ndarray] = field(default_factory=dict)


def make_mil_cohort(
    n_patients: int = 200,
    *,
    task: str = "grade",
    seed: int = 0,
    feature_dim: int = 64,
    tiles_per_slide: tuple[int, int] = (200, 600),
    signal_fraction: float = 0.05,
    signal_strength: float = 4.0,
    risk_scale: float = 1.5,
    risk_signal: float = 3.0,
    slide_nuisance: float = 0.5,
    p_multi_slide: float = 0.2,
    censoring: float = 0.3,
    background: str = "gaussian",
    n_clusters: int = 10,
    cluster_spread: float = 1.0,
    dirichlet_alpha: float = 1.0,
    signal_layout: str = "scattered",
    label_noise: float = 0.0,
    positive_fraction: float = 0.5,
) -> MILCohort:
    """Make a deterministic synthetic MIL cohort.

    Parameters
    ----------
    task
        ``"grade"``: half the patients are positive and only their slides carry tumour tiles
        (about ``signal_fraction`` of the tiles). ``"survival"``: every slide carries tumour
        tiles; the tumour tiles' coordinate along a second direction is the patient's true risk
        (standard normal times ``risk_scale``; the tumour tiles move ``risk_signal`` per unit
        of standardised risk), and times are exponential with hazard ``exp(risk)`` with
        uniform censoring (about ``censoring`` of patients).
    slide_nuisance
        Scale of each slide's random offset (all tiles of a slide move together).
    p_multi_slide
        Fraction of patients with two or three slides.
    background
        ``"gaussian"``: normal tiles are standard normal. ``"clusters"``: tissue types, the
        way encoder features of real slides look: ``n_clusters`` cluster centres (each
        coordinate normal with sd ``cluster_spread``), unit-variance tiles around them, and
        every slide its own mixture of the types (Dirichlet with concentration
        ``dirichlet_alpha``), so slide means differ far more than the signal moves them.
    signal_layout
        ``"scattered"``: the witness tiles are drawn anywhere in the slide. ``"cluster"``: they
        are one patch of adjacent tiles on the slide's tile grid (:func:`grid_coords`, the
        coordinates :func:`bags_to_store` writes), like a tumour focus.
    label_noise
        Fraction of patients whose recorded ``grade`` is flipped (the tiles follow the true
        grade, kept as ``patients["grade_true"]``).
    positive_fraction
        Fraction of patients with grade 1 (class imbalance below 0.5).
    """
    if task not in ("grade", "survival"):
        raise ConfigError(f"task must be 'grade' or 'survival', got {task!r}")
    if n_patients < 4:
        raise ConfigError(f"make_mil_cohort needs at least 4 patients, got {n_patients}")
    if background not in ("gaussian", "clusters"):
        raise ConfigError(f"background must be 'gaussian' or 'clusters', got {background!r}")
    if signal_layout not in ("scattered", "cluster"):
        raise ConfigError(f"signal_layout must be 'scattered' or 'cluster', got {signal_layout!r}")
    if not 0.0 <= label_noise < 0.5 or not 0.0 < positive_fraction < 1.0:
        raise ConfigError("label_noise must be in [0, 0.5) and positive_fraction in (0, 1)")
    rng = np.random.default_rng(seed)
    n = n_patients
    pids = [f"P{i:04d}" for i in range(n)]
    d = rng.standard_normal((2, feature_dim))
    d[0] /= np.linalg.norm(d[0])
    d[1] -= d[1] @ d[0] * d[0]  # orthogonal to the tumour direction
    d[1] /= np.linalg.norm(d[1])

    grade = np.zeros(n, int)
    grade[rng.permutation(n)[: int(n * positive_fraction)]] = 1
    risk = rng.standard_normal(n) * risk_scale
    t_event = rng.exponential(30.0 * np.exp(-risk))
    c = rng.uniform(0, 1, n) * np.quantile(t_event, 1.0 - censoring) * 2.0
    event = (t_event <= c) if censoring > 0 else np.ones(n, bool)
    time = np.round(np.maximum(np.where(event, t_event, c), 0.05), 2)

    n_slides = np.where(rng.uniform(size=n) < p_multi_slide, rng.integers(2, 4, n), 1)
    # drawn after everything the default cohort draws, so its bags stay as they were
    extra = np.random.default_rng([seed, 1])
    centres = extra.standard_normal((n_clusters, feature_dim)) * cluster_spread
    recorded = grade.copy()
    if label_noise > 0:
        flip = extra.permutation(n)[: round(n * label_noise)]
        recorded[flip] = 1 - recorded[flip]
    rows, bags, sig_of = [], {}, {}
    for i, pid in enumerate(pids):
        for k in range(n_slides[i]):
            sid = f"{pid}-S{k + 1}"
            nt = int(rng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
            x = rng.standard_normal((nt, feature_dim))
            if background == "clusters":
                mix = extra.dirichlet(np.full(n_clusters, dirichlet_alpha))
                x += centres[extra.choice(n_clusters, nt, p=mix)]
            x += slide_nuisance * rng.standard_normal(feature_dim)
            carries = task == "survival" or grade[i] == 1
            sig = np.zeros(nt, bool)
            if carries:
                m = max(1, int(rng.binomial(nt, signal_fraction)))
                if signal_layout == "cluster":
                    xy = grid_coords(nt)
                    centre = xy[extra.integers(nt)]
                    dist = ((xy - centre) ** 2).sum(1) + extra.uniform(0, 0.5, nt)
                    sig[np.argsort(dist)[:m]] = True
                else:
                    sig[rng.choice(nt, m, replace=False)] = True
                x[sig] += signal_strength * d[0]
                if task == "survival":
                    x[sig] += risk_signal * risk[i] / risk_scale * d[1]
            bags[sid] = x.astype(np.float16)
            sig_of[sid] = sig
            rows.append((pid, sid, int(recorded[i]), float(time[i]), int(event[i])))
    labels = pd.DataFrame(rows, columns=["patient_id", "slide_id", "grade", "time", "event"])
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "risk": risk,
            "grade": recorded,
            "grade_true": grade,
            "time": time,
            "event": event.astype(int),
            "n_slides": n_slides,
        }
    )
    return MILCohort(labels=labels, patients=patients, bags=bags, tile_signal=sig_of)


def grid_coords(n: int) -> np.ndarray:
    """Row-major positions ``(n, 2)`` (column, row) of ``n`` tiles on a square grid: where
    :func:`bags_to_store` puts a bag's tiles (times the tile size)."""
    side = int(np.ceil(np.sqrt(max(n, 1))))
    idx = np.arange(n)
    return np.stack([idx % side, idx // side], 1)


def bags_to_store(
    bags: dict[str, np.ndarray],
    store: str | os.PathLike[str],
    *,
    encoder: str = "synthetic",
    tile_px: int = 256,
) -> Path:
    """Write feature bags into a (new or existing) feature store as complete slides, with
    made-up row-major coordinates, so training code reads them like tiled slides."""
    from wsimm.store import open_store

    fs = open_store(store, "a")
    with fs.lock():
        for sid, x in bags.items():
            n = len(x)
            side = int(np.ceil(np.sqrt(n)))
            coords = grid_coords(n) * tile_px
            fs.begin_slide(
                sid,
                coords=coords,
                tissue_fraction=np.ones(n, np.float16),
                tissue_mask=np.ones((max(1, side), max(1, side)), np.uint8),
                mask_downsample=float(tile_px),
                attrs={
                    "source": "synthetic bags",
                    "tile_px": tile_px,
                    "stride_px": tile_px,
                    "target_mpp": 0.5,
                    "mpp": 0.5,
                    "tile_size0": float(tile_px),
                    "stride0": float(tile_px),
                    "level0_dims": [side * tile_px, side * tile_px],
                },
            )
            fs.begin_features(
                sid, encoder, n=n, dim=x.shape[1], attrs={"encoder": encoder, "synthetic": True}
            )
            fs.write_features(sid, encoder, 0, x)
            fs.finish_features(sid, encoder)
            fs.finish_slide(sid)
    return Path(store)
