"""A second, independently designed family of synthetic MIL cohorts: tiles are rendered from a
latent tissue state through a fixed random nonlinear "encoder", and the witness tiles are a
subtle morphological variant of one normal tissue type, not an additive shift in feature space.

``make_mil_cohort`` places the signal along one feature direction; a training recipe tuned on it
alone could exploit that. This family differs in every way that matters to a MIL model:
nonlinear features, a per-slide multiplicative stain (gain) as well as an offset, bag sizes
with a heavy (log-normal) tail, a witness fraction that varies from slide to slide, and, for
survival, risk carried by both the tumour's burden and its phenotype.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError
from wsimm.testing._bags import MILCohort

__all__ = ["make_latent_cohort"]


def make_latent_cohort(
    n_patients: int = 200,
    *,
    task: str = "grade",
    seed: int = 0,
    feature_dim: int = 64,
    latent_dim: int = 6,
    n_types: int = 8,
    median_tiles: int = 600,
    max_tiles: int = 4000,
    signal_fraction: float = 0.05,
    signal_strength: float = 1.5,
    risk_signal: float = 1.0,
    stain: float = 0.3,
    p_multi_slide: float = 0.2,
    positive_fraction: float = 0.5,
    censoring: float = 0.3,
) -> MILCohort:
    """Make a deterministic cohort of the latent-tissue family.

    Parameters
    ----------
    latent_dim, n_types
        Tissue types are prototypes in a ``latent_dim``-dimensional morphology space; every
        slide is its own sparse mixture of them (Dirichlet, concentration 0.5).
    median_tiles, max_tiles
        Bag sizes are log-normal around ``median_tiles`` (sd 0.6 in log space), clipped to
        ``[32, max_tiles]``.
    signal_fraction
        Mean fraction of witness (tumour) tiles in a slide that carries them; each slide draws
        its own fraction (Beta with concentration 20 around it).
    signal_strength
        How far, in latent units, the tumour phenotype sits from the normal tissue type it
        derives from (the prototypes are about 2.8 units apart on average).
    risk_signal
        Survival: the tumour phenotype moves this far along a second latent direction per
        unit of standardised risk, and the tumour burden grows with risk.
    censoring
        Survival: uniform censoring tuned so that about this fraction (up to 0.1 more) of the
        patients are censored.
    stain
        Per-slide scanner/stain effect: a per-feature gain ``exp(N(0, stain / 2))`` and an
        offset ``N(0, stain)`` applied to every tile of the slide.
    """
    if task not in ("grade", "survival"):
        raise ConfigError(f"task must be 'grade' or 'survival', got {task!r}")
    if n_patients < 4:
        raise ConfigError(f"make_latent_cohort needs at least 4 patients, got {n_patients}")
    if not 0.0 < signal_fraction < 1.0:
        raise ConfigError(f"signal_fraction must be in (0, 1), got {signal_fraction}")
    rng = np.random.default_rng([seed, 77])
    hidden = 4 * feature_dim
    proto = rng.standard_normal((n_types, latent_dim)) * 1.2
    axes = np.linalg.qr(rng.standard_normal((latent_dim, 2)))[0].T  # tumour, risk directions
    w1 = rng.standard_normal((latent_dim, hidden)) / np.sqrt(latent_dim)
    b1 = rng.standard_normal(hidden) * 0.5
    w2 = rng.standard_normal((hidden, feature_dim)) / np.sqrt(hidden)

    def render(z: np.ndarray) -> np.ndarray:
        h = np.logaddexp(0.0, z @ w1 + b1)  # softplus
        return h @ w2

    # scale features to unit variance over typical tissue
    typical = proto[rng.integers(n_types, size=4000)]
    probe = render(typical + rng.standard_normal((4000, latent_dim)) * 0.4)
    mu, sd = probe.mean(0), probe.std(0) + 1e-6

    n = n_patients
    pids = [f"L{i:04d}" for i in range(n)]
    grade = (rng.uniform(size=n) < positive_fraction).astype(int)
    if grade.min() == grade.max():  # both classes, however small the cohort
        grade[:2] = [0, 1]
    risk = rng.standard_normal(n)
    shape = 1.5
    t_event = (rng.exponential(size=n) / np.exp(risk)) ** (1.0 / shape) * 24.0
    c = rng.uniform(0.0, 1.0, n) * np.quantile(t_event, 1.0 - censoring) * 2.0
    event = (t_event <= c) if censoring > 0 else np.ones(n, bool)
    time = np.round(np.maximum(np.where(event, t_event, c), 0.1), 1)
    n_slides = np.where(rng.uniform(size=n) < p_multi_slide, 2, 1)
    origin = 0  # the normal tissue type the tumour derives from

    rows, bags, sig_of = [], {}, {}
    for i, pid in enumerate(pids):
        carries = task == "survival" or grade[i] == 1
        for k in range(n_slides[i]):
            sid = f"{pid}-{chr(65 + k)}"
            nt = int(np.clip(np.exp(rng.normal(np.log(median_tiles), 0.6)), 32, max_tiles))
            mix = rng.dirichlet(np.full(n_types, 0.5))
            types = rng.choice(n_types, nt, p=mix)
            z = proto[types] + rng.standard_normal((nt, latent_dim)) * 0.4
            sig = np.zeros(nt, bool)
            if carries:
                frac = signal_fraction
                if task == "survival":  # tumour burden grows with risk
                    frac = signal_fraction * np.exp(0.35 * risk[i]) / np.exp(0.35**2 / 2)
                frac = float(np.clip(frac, 1e-3, 0.9))
                f = rng.beta(20 * frac, 20 * (1 - frac))
                m = max(1, round(nt * f))
                sig[rng.choice(nt, m, replace=False)] = True
                tumour = proto[origin] + signal_strength * axes[0]
                if task == "survival":
                    tumour = tumour + risk_signal * risk[i] * axes[1]
                z[sig] = tumour + rng.standard_normal((m, latent_dim)) * 0.4
            x = (render(z) - mu) / sd
            gain = np.exp(rng.normal(0.0, stain / 2, feature_dim))
            x = x * gain + rng.normal(0.0, stain, feature_dim)
            x += rng.standard_normal(x.shape) * 0.3  # encoder noise
            bags[sid] = x.astype(np.float16)
            sig_of[sid] = sig
            rows.append((pid, sid, int(grade[i]), float(time[i]), int(event[i])))
    labels = pd.DataFrame(rows, columns=["patient_id", "slide_id", "grade", "time", "event"])
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "risk": risk,
            "grade": grade,
            "grade_true": grade,
            "time": time,
            "event": event.astype(int),
            "n_slides": n_slides,
        }
    )
    return MILCohort(labels=labels, patients=patients, bags=bags, tile_signal=sig_of)
