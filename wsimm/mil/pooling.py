"""Mean and max pooling: the baselines attention has to beat."""

from __future__ import annotations

from torch import Tensor, nn

from wsimm.mil._base import MILModel, mlp_in, register_model
from wsimm.mil._ops import segment_count, segment_max, segment_mean, segment_sum


class _Pooling(MILModel):
    """Tile projection + a fixed pooling + linear head."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        dropout: float = 0.25,
        bag_norm: bool = True,
    ):
        super().__init__(in_dim, n_outputs, bag_norm)
        self.fc = mlp_in(in_dim, hidden, dropout)
        self.head = nn.Linear(hidden, n_outputs)


@register_model("mean")
class MeanPool(_Pooling):
    """Project tiles, average them per bag; attention is uniform."""

    def pool(self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None):
        h = self.fc(x)
        attn = 1.0 / segment_count(batch, n_bags).to(h.dtype)[batch]
        return segment_mean(h, batch, n_bags), attn, None


@register_model("max")
class MaxPool(_Pooling):
    """Project tiles, take the per-feature maximum per bag; a tile's attention is the share of
    features for which it is the bag's maximum."""

    def pool(self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None):
        h = self.fc(x)
        emb = segment_max(h, batch, n_bags)
        wins = (h == emb[batch]).to(h.dtype).sum(1)
        attn = wins / segment_sum(wins, batch, n_bags).clamp_min(1)[batch]
        return emb, attn.detach(), None
