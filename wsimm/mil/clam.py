"""CLAM (Lu et al. 2021): gated attention with an instance-level clustering loss.

``clam_sb`` has one attention branch; ``clam_mb`` one branch and one bag classifier per
class. During training with labels, each bag's most and least attended tiles are pseudo-labelled
for a per-class instance classifier (in-class: top-k positive, bottom-k negative; with
``subtyping``, other classes' top-k negative); the mean of those cross-entropies is
``aux_loss``. Survival runs have no class labels and train without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsimm.mil._base import MILModel, mlp_in, register_model
from wsimm.mil._ops import segment_softmax
from wsimm.mil.abmil import Attention, top_bottom


class _CLAM(MILModel):
    branches_per_class = False

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
        inst_weight: float = 0.3,
        bag_norm: bool = True,
    ):
        super().__init__(in_dim, n_outputs, bag_norm)
        self.fc = mlp_in(in_dim, hidden, dropout)
        self.branches = n_outputs if self.branches_per_class else 1
        self.attention = Attention(hidden, attn_dim, dropout, gated=True, branches=self.branches)
        self.instance = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(n_outputs)])
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.aux_weight = inst_weight

    def _instance_loss(self, h: Tensor, a: Tensor, batch: Tensor, y: Tensor) -> Tensor:
        losses = []
        for b in range(len(y)):
            sel = (batch == b).nonzero().squeeze(1)
            hb, ab = h[sel], a[sel]
            for c, clf in enumerate(self.instance):
                col = ab[:, c if self.branches > 1 else 0]
                top, bottom = top_bottom(col.detach(), self.k_sample)
                if c == int(y[b]):
                    inst = torch.cat([hb[top], hb[bottom]])
                    target = torch.cat([torch.ones(len(top)), torch.zeros(len(bottom))])
                elif self.subtyping:
                    inst, target = hb[top], torch.zeros(len(top))
                else:
                    continue
                losses.append(F.cross_entropy(clf(inst), target.long().to(h.device)))
        return torch.stack(losses).mean()

    def pool(self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None):
        h = self.fc(x)
        a = segment_softmax(self.attention(h), batch, n_bags)  # (N, branches)
        emb = h.new_zeros((n_bags, self.branches, h.shape[1]))
        emb.index_add_(0, batch, a.unsqueeze(2) * h.unsqueeze(1))
        aux = None
        if y is not None and self.training and y.dtype == torch.long:
            aux = self._instance_loss(h, a, batch, y)
        if self.branches == 1:
            return emb[:, 0], a[:, 0], aux
        return emb, a, aux


@register_model("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single branch."""

    def __init__(self, in_dim: int, n_outputs: int, **kwargs):
        super().__init__(in_dim, n_outputs, **kwargs)
        self.head = nn.Linear(self.fc[0].out_features, n_outputs)


@register_model("clam_mb")
class CLAMMB(_CLAM):
    """CLAM multi branch: one attention branch and one bag classifier per output."""

    branches_per_class = True

    def __init__(self, in_dim: int, n_outputs: int, **kwargs):
        super().__init__(in_dim, n_outputs, **kwargs)
        hidden = self.fc[0].out_features
        self.head_w = nn.Parameter(torch.randn(n_outputs, hidden) * hidden**-0.5)
        self.head_b = nn.Parameter(torch.zeros(n_outputs))

    def head_out(self, emb: Tensor) -> Tensor:
        return (emb * self.head_w).sum(-1) + self.head_b
