"""Attention-based MIL (Ilse, Tomczak & Welling 2018), plain and gated attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsimm.mil._base import MILModel, mlp_in, register_model
from wsimm.mil._ops import segment_softmax, segment_sum


class Attention(nn.Module):
    """Tile scores ``w^T tanh(V h)`` or, gated, ``w^T (tanh(V h) * sigmoid(U h))``;
    ``branches`` scores per tile (CLAM-MB uses one per class)."""

    def __init__(self, hidden: int, attn_dim: int, dropout: float, gated: bool, branches: int = 1):
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.u = (
            nn.Sequential(nn.Linear(hidden, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
            if gated
            else None
        )
        self.w = nn.Linear(attn_dim, branches)

    def forward(self, h: Tensor) -> Tensor:
        a = self.v(h)
        if self.u is not None:
            a = a * self.u(h)
        return self.w(a)


@register_model("abmil")
class ABMIL(MILModel):
    """Tiles -> Linear/ReLU -> attention softmax within the bag -> weighted sum -> head."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = False,
        bag_norm: bool = True,
    ):
        super().__init__(in_dim, n_outputs, bag_norm)
        self.fc = mlp_in(in_dim, hidden, dropout)
        self.attention = Attention(hidden, attn_dim, dropout, gated)
        self.head = nn.Linear(hidden, n_outputs)

    def pool(self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None):
        h = self.fc(x)
        a = segment_softmax(self.attention(h), batch, n_bags)
        emb = segment_sum(a * h, batch, n_bags)
        return emb, a[:, 0], None


@register_model("abmil_gated")
class GatedABMIL(ABMIL):
    """ABMIL with gated attention."""

    def __init__(self, in_dim: int, n_outputs: int, **kwargs):
        kwargs.setdefault("gated", True)
        super().__init__(in_dim, n_outputs, **kwargs)


def top_bottom(a: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``k`` highest and ``k`` lowest values of a 1-d tensor."""
    k = max(1, min(k, len(a) // 2))
    order = torch.argsort(a, descending=True)
    return order[:k], order[-k:]
