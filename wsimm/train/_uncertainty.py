"""Uncertainty-weighted modality fusion (``fusion_kwargs: {uncertainty: N}``).

A fold's trained fusion network scores each test patient ``N`` times (Monte Carlo dropout,
:func:`wsimm.fusion.mc_dropout`, and a bootstrap refit of the wide linear part per pass),
once with all of the patient's modalities and once without each modality. Per pass,
modality ``m``'s *contribution* is the change it makes to the prediction (the risk for
survival, the centred logits for grading): ``c_m = f(all) - f(all but m)``; the network was
trained with modality dropout, so ``f(all but m)`` is a prediction it knows how to make. Its
spread over the passes, ``s_m^2``, is the model's uncertainty about that contribution;
``tau_m^2``, the robust spread of ``c_m`` over the fold's training patients, is how much the
modality moves predictions at all; ``r_m``, the patient's measurement reliability (the
share of its inputs' spread that a patient measured like most has), says how much of the
observed input is signal. The fused prediction keeps each contribution in proportion to
``w_m = r_m tau_m^2 / (tau_m^2 + s_m^2)``:

    f_u = f(all) - sum_m (1 - w_m) (f(all) - f(all but m))

per pass, averaged over the passes. The passes also give a predictive distribution: for
survival the mixture of the passes' survival curves, whose central ``interval`` (0.8 by
default) of event times is reported per patient and whose coverage is checked on the test
patients (censored patients count with the share of their remaining mass that falls inside,
as in D-calibration); for grading the smallest set of classes holding ``interval`` of the
averaged probabilities, and how often it holds the true grade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError

#: Monte Carlo passes of ``uncertainty: true``
DEFAULT_PASSES = 20


@dataclass
class UncertaintySpec:
    """``passes`` Monte Carlo dropout passes; ``level`` the nominal coverage of the
    intervals."""

    passes: int
    level: float = 0.8

    @classmethod
    def pop_from(cls, kw: dict) -> UncertaintySpec | None:
        """Take ``uncertainty`` (``true`` or a number of passes) and ``interval`` out of the
        fusion kwargs ``kw``; ``None`` when the switch is off."""
        value = kw.pop("uncertainty", 0)
        level = float(kw.pop("interval", 0.8))
        if value is True:
            value = DEFAULT_PASSES
        try:
            passes = int(value or 0)
        except (TypeError, ValueError):
            raise ConfigError(
                f"fusion_kwargs uncertainty must be true, false or a number of passes, "
                f"got {value!r}"
            ) from None
        if passes < 0 or (0 < passes < 2):
            raise ConfigError(
                f"fusion_kwargs uncertainty needs at least 2 Monte Carlo passes, got {passes}"
            )
        if not 0 < level < 1:
            raise ConfigError(f"fusion_kwargs interval must be in (0, 1), got {level}")
        return cls(passes, level) if passes else None


def _scalar(fm, logits: np.ndarray) -> np.ndarray:
    """What a contribution is measured on: the risk ``(n, 1)`` (survival) or the centred
    logits ``(n, K)`` (grading)."""
    if fm.task == "survival":
        return fm.risk(logits)[:, None]
    return logits - logits.mean(1, keepdims=True)


def _has(graphs: list, m: str) -> np.ndarray:
    from wsimm.fusion._model import MODALITY_NODE

    t = MODALITY_NODE[m]
    return np.array([g[t].num_nodes > 0 for g in graphs])


def omics_reliability(graphs: list, n_train: int, assays: list[str]) -> tuple:
    """Each patient's omics reliability, by ``pidx``: the share of its standardised genes'
    spread that biology accounts for, ``sum_a top_a / sum_a mean(z_a^2)`` over its assays,
    at most 1, with ``top_a`` the top of the training patients' usual range of
    ``mean(z_a^2)`` (:func:`_usual_top`). A contaminated or degraded sample spreads far
    more than the biology does; as in regression calibration, the expected true
    contribution is the observed one times this ratio. Returns ``(reliability, {assay:
    top})``; ``graphs`` in ``pidx`` order, the first ``n_train`` the training patients."""
    pidx = np.array([int(g.pidx) for g in graphs])
    usual = np.zeros(int(pidx.max()) + 1 if len(pidx) else 0)
    seen = np.zeros_like(usual)
    refs = {}
    for a in assays:
        key = f"omics_{a}"
        ms = np.array([float((getattr(g, key).double() ** 2).mean()) for g in graphs])
        present = np.array([bool(getattr(g, key).abs().sum() > 0) for g in graphs])
        ref = ms[:n_train][present[:n_train]]
        if not len(ref):
            continue
        refs[key] = _usual_top(ref)
        usual[pidx] += np.where(present, refs[key], 0.0)
        seen[pidx] += np.where(present, ms, 0.0)
    rel = np.where(seen > 0, np.minimum(1.0, usual / np.maximum(seen, 1e-12)), 1.0)
    return rel, refs


def _usual_top(values: np.ndarray) -> float:
    """The top of the usual range of ``values``: median + 2 robust sd (scaled MAD), so that
    half of the training patients are not called unreliable for being above the median,
    and up to half of them may be badly measured without moving it."""
    med = float(np.median(values))
    return med + 2 * 1.4826 * float(np.median(np.abs(values - med)))


def slide_reliability(runner, graphs: list, train_slides: list[int]) -> tuple:
    """The same for slides, by ``pidx``: the top of the training slides' usual range of mean
    squared normalised tile features over the patient's slides' (pooled over its slides, at
    most 1). Returns ``(reliability, top)``."""
    import torch

    ids = runner.fd.slide_ids
    ms = np.zeros(len(ids))
    for i, sid in enumerate(ids):
        x = torch.from_numpy(np.asarray(runner.fd.source.slide(sid), np.float32))
        if runner.norm is not None:
            x = runner.norm.apply(x)
        ms[i] = float((x.double() ** 2).mean()) if len(x) else 0.0
    ref = ms[sorted(set(train_slides))] if train_slides else ms
    med = _usual_top(ref) if len(ref) else 0.0
    pidx = np.array([int(g.pidx) for g in graphs])
    rel = np.ones(int(pidx.max()) + 1 if len(pidx) else 0)
    for g, p in zip(graphs, pidx, strict=True):
        s = g["slide"].sidx.numpy()
        if len(s) and ms[s].sum() > 0:
            rel[p] = min(1.0, med * len(s) / float(ms[s].sum()))
    return rel, med


def contribution_scale(fm, runner, graphs: list, mods: list[str], bs: int) -> dict[str, float]:
    """``tau_m^2``: the spread of each modality's contribution over ``graphs`` (the
    training patients that have the modality; eval mode), as a robust variance (the squared
    scaled median absolute deviation)."""
    full, _ = runner.run(graphs, batch_size=bs, explain=False)
    out = {}
    for m in mods:
        has = _has(graphs, m)
        if has.sum() < 2:
            out[m] = 0.0
            continue
        lg, _ = runner.run(graphs, remove=(m,), batch_size=bs, explain=False)
        c = _scalar(fm, full) - _scalar(fm, lg)
        # a robust spread (MAD): badly measured training patients must not widen it
        mad = np.median(np.abs(c[has] - np.median(c[has], 0)), 0)
        out[m] = float(((1.4826 * mad) ** 2).mean())
    return out


def mc_predict(fm, runner, graphs: list, mods: list[str], spec: UncertaintySpec, *, bs, seed):
    """The Monte Carlo passes on ``graphs``: returns ``(weighted, plain, sd, weights,
    without)`` with ``weighted`` / ``plain`` the ``(passes, n, K)`` logits with and without
    the uncertainty weighting, ``sd[m]`` each modality's contribution sd ``(n,)``,
    ``weights[m]`` its weight ``w_m`` ``(n,)`` and ``without[m]`` the mean logits without
    it; a modality needs a training scale in ``fm.meta``."""
    import torch

    tau2 = fm.meta["uncertainty"]["tau2"]
    wides = getattr(runner, "wides", None) or []
    full, without = [], {m: [] for m in mods}
    for p in range(spec.passes):
        if wides:  # the linear part of one bootstrap refit per pass
            _set_wide(runner.net, wides[p % len(wides)])
        # each pass draws its own dropout masks; the same masks for the with / without runs
        torch.manual_seed(seed * 7919 + p)
        lg, _ = runner.run(graphs, batch_size=bs, explain=False, mc=True)
        full.append(lg)
        for m in mods if len(mods) > 1 else ():
            torch.manual_seed(seed * 7919 + p)
            lg_m, _ = runner.run(graphs, remove=(m,), batch_size=bs, explain=False, mc=True)
            without[m].append(lg_m)
    if wides:
        _set_wide(runner.net, runner.wide)
    plain = np.stack(full).astype(np.float64)
    weighted = plain.copy()
    sd, weights, without_mean = {}, {}, {}
    for m in mods:
        if not without[m]:
            continue
        wo = np.stack(without[m]).astype(np.float64)
        c = np.stack([_scalar(fm, plain[p]) - _scalar(fm, wo[p]) for p in range(len(wo))])
        s2 = c.var(0).mean(1)  # (n,)
        t2 = float(tau2.get(m, 0.0))
        w = np.where(s2 > 0, t2 / np.maximum(t2 + s2, 1e-300), 1.0)
        rel = getattr(runner, "reliability", {}).get(m)
        if rel is not None:  # the patient's measurement of the modality
            w = w * rel[[int(g.pidx) for g in graphs]]
        w = np.where(_has(graphs, m), w, 1.0)
        weighted -= (1 - w)[None, :, None] * (plain - wo)
        sd[m], weights[m] = np.sqrt(s2), w
        without_mean[m] = wo.mean(0)
    return weighted, plain, sd, weights, without_mean


def _set_wide(net, w) -> None:
    for member in getattr(net, "members", [net]):
        member.set_wide(w)


def interval_columns(fm, passes: np.ndarray, part: pd.DataFrame, train: pd.DataFrame, level):
    """Per test patient the predictive interval of the passes' mixture, and its coverage:
    ``(columns, coverage)``. Survival: ``time_lo`` / ``time_hi``, the times where the mixed
    survival curve crosses ``(1 + level) / 2`` and ``(1 - level) / 2`` (``inf`` when it never
    falls that low), and ``risk_sd``; coverage counts each event inside its interval and each
    censored patient by the share of its remaining mass inside (D-calibration's rule).
    Grading: ``pred_set``, the most probable grades holding ``level`` of the averaged
    probabilities, and ``set_mass``, the probability they hold (a whole grade at a time, so
    usually more than ``level``: the coverage a calibrated model shows); coverage is how often
    the set holds the true grade."""
    hi_q, lo_q = (1 + level) / 2, (1 - level) / 2
    if fm.task == "grade":
        prob = np.mean([fm.probabilities(p) for p in passes], 0)
        order = np.argsort(-prob, 1, kind="stable")
        cum = np.cumsum(np.take_along_axis(prob, order, 1), 1)
        size = np.minimum((cum < level).sum(1) + 1, prob.shape[1])
        sets = [sorted(order[i, : size[i]].tolist()) for i in range(len(prob))]
        y = part["y"].to_numpy()
        covered = np.array([y[i] in s for i, s in enumerate(sets)], float)
        cols = {
            "pred_set": ["|".join(map(str, s)) for s in sets],
            "set_size": size,
            # the probability the set holds: what a calibrated model covers (>= level)
            "set_mass": cum[np.arange(len(prob)), size - 1],
        }
        return cols, float(covered.mean()) if len(covered) else float("nan")
    grid = np.unique(train["time"].to_numpy(np.float64))  # where the curves can step
    surv = np.mean([fm.survival_at(p, grid) for p in passes], 0)  # (n, len(grid))

    def crossing(q: float) -> np.ndarray:
        below = surv <= q
        first = np.where(below.any(1), below.argmax(1), -1)
        return np.where(first >= 0, grid[np.clip(first, 0, None)], np.inf)

    t = part["time"].to_numpy(np.float64)
    diag = np.arange(len(t))
    s_t = np.mean([fm.survival_at(p, t)[diag, diag] for p in passes], 0)  # S_i(T_i)
    ev = part["event"].to_numpy().astype(bool)
    inside = np.where(
        ev,
        ((s_t >= lo_q) & (s_t <= hi_q)).astype(float),
        np.clip(np.minimum(s_t, hi_q) - lo_q, 0, None) / np.maximum(s_t, 1e-12),
    )
    risks = np.stack([fm.risk(p) for p in passes])
    cols = {"time_lo": crossing(hi_q), "time_hi": crossing(lo_q), "risk_sd": risks.std(0)}
    return cols, float(inside.mean()) if len(inside) else float("nan")
