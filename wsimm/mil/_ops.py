"""Segment operations over ragged bags concatenated along the tile axis.

A batch of bags is one ``(N, D)`` tile tensor plus ``batch``: the bag index of every tile (the
layout torch-geometric uses for graphs). Reductions use ``index_add`` / ``scatter_reduce``, so
bags of any size batch together without padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _expand(index: Tensor, like: Tensor) -> Tensor:
    return index.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


def segment_sum(x: Tensor, batch: Tensor, n: int) -> Tensor:
    out = x.new_zeros((n, *x.shape[1:]))
    return out.index_add_(0, batch, x)


def segment_count(batch: Tensor, n: int) -> Tensor:
    return torch.bincount(batch, minlength=n)


def segment_mean(x: Tensor, batch: Tensor, n: int) -> Tensor:
    cnt = segment_count(batch, n).clamp_min(1).to(x.dtype)
    return segment_sum(x, batch, n) / cnt.view(-1, *([1] * (x.dim() - 1)))


def segment_max(x: Tensor, batch: Tensor, n: int) -> Tensor:
    out = x.new_full((n, *x.shape[1:]), float("-inf"))
    return out.scatter_reduce(0, _expand(batch, x), x, reduce="amax", include_self=True)


def segment_softmax(scores: Tensor, batch: Tensor, n: int) -> Tensor:
    """Softmax of ``scores`` (``(N,)`` or ``(N, K)``) within each bag."""
    mx = segment_max(scores.detach(), batch, n)
    e = torch.exp(scores - mx[batch])
    return e / segment_sum(e, batch, n)[batch].clamp_min(1e-30)
