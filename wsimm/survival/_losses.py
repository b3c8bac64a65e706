"""Survival losses: discrete-time negative log-likelihood and Cox partial likelihood.
Convention: ``event = 1`` observed. (The risk and survival-curve read-outs of a trained model
are :class:`wsimm.train.FoldModel` methods.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nll_loss(logits: Tensor, bins: Tensor, event: Tensor, alpha: float = 0.0) -> Tensor:
    """Discrete-time hazard NLL. ``logits`` ``(B, K)`` are per-bin hazard logits; a patient
    with an event in bin ``k`` contributes ``-log S(k-1) - log h(k)``; one censored in bin
    ``k`` contributes ``-log S(k)`` (they survived it). ``alpha`` up-weights the uncensored
    term as in MCAT/PORPOISE (0 = plain likelihood)."""
    log_h = F.logsigmoid(logits)  # log hazard
    log_1mh = F.logsigmoid(-logits)  # log(1 - hazard)
    cum = torch.cumsum(log_1mh, 1)  # log S(k)
    k = bins.long().view(-1, 1)
    log_s_prev = torch.where(
        k > 0, cum.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(k, dtype=cum.dtype)
    )
    ev = event.float().view(-1, 1)
    uncensored = -(log_s_prev + log_h.gather(1, k))
    censored = -cum.gather(1, k)
    loss = ev * uncensored * (1 + alpha) + (1 - ev) * censored
    return loss.mean()


def cox_loss(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) over the batch, per event."""
    risk = risk.view(-1)
    order = torch.argsort(time, descending=True)
    r, e = risk[order], event[order].float()
    log_cum = torch.logcumsumexp(r, 0)  # log sum over patients still at risk
    n_ev = e.sum()
    if n_ev == 0:
        return risk.sum() * 0.0  # no event in this batch: no information, keep the graph
    return -((r - log_cum) * e).sum() / n_ev
