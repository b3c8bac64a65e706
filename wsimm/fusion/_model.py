"""Fusion networks over the patient graphs: modality encoders shared by every variant, and
the ways to join them (``graph``: heterogeneous attention message passing into a patient hub;
``late``, ``concat``, ``kronecker``: the usual non-graph fusions, here as baselines).

Shapes: ``B`` patients in a batch, ``h`` the hidden width, ``K`` gene-group kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from wsimm.errors import ConfigError
from wsimm.fusion._graph import EDGE_TYPES, NODE_TYPES

__all__ = [
    "FUSIONS",
    "CoAttention",
    "FusionEnsemble",
    "FusionNet",
    "FusionOutput",
    "FusionSpec",
    "mc_dropout",
]

#: how modalities are joined
FUSIONS = ("graph", "late", "concat", "kronecker")
#: node type of each modality
MODALITY_NODE = {"slide": "slide", "omics": "gene_group", "clinical": "clinical"}


class FusionOutput(NamedTuple):
    """``logits`` ``(B, n_outputs)``; ``weights`` per node type the readout attention of each
    node (graph fusion; ``None`` otherwise); ``aux_loss`` from the slide MIL model or ``None``;
    ``wide`` the linear part's ``(B, n_outputs)`` term per modality (and ``bias``), already
    in ``logits`` (``None`` without a wide part)."""

    logits: Tensor
    weights: dict[str, Tensor] | None
    aux_loss: Tensor | None
    wide: dict[str, Tensor] | None = None
    coattn: CoAttention | None = None
    align_loss: Tensor | None = None


class CoAttention(NamedTuple):
    """Gene-group -> tile attention of a batch (graph fusion with ``coattention``): ``attn``
    ``(B, G, T)`` in [0, 1], a patient's gene-group nodes (rows, in node order) over its tiles
    (columns, in tile order); ``groups`` / ``tiles``: ``(B, G)`` / ``(B, T)`` masks of the real
    rows and columns."""

    attn: Tensor
    groups: Tensor
    tiles: Tensor


@dataclass
class FusionSpec:
    """What a network is built for (saved with the fold so it can be rebuilt)."""

    fusion: str
    modalities: list[str]
    n_outputs: int
    kind_genes: list[int]  # genes per gene-group kind (omics)
    assays: list[str]  # assay of each kind
    n_clinical: int = 0  # clinical variables
    n_slots: int = 0  # clinical embedding slots
    slide_dim: int = 0  # tile feature width (slides)
    slide_model: str = "abmil"
    slide_model_kwargs: dict[str, Any] | None = None
    hidden: int = 64
    layers: int = 2
    conv: str = "gatv2"
    heads: int = 4
    dropout: float = 0.25
    modality_dropout: float = 0.25
    kron_dim: int = 16
    wide: bool = False  # a linear model over the same inputs, added to the output
    wide_genes: dict[str, int] | None = None  # genes per assay the wide part reads
    coattention: bool = False  # gene-group nodes attend over their patient's tiles, and back
    #: the wide part also reads the slides: ``cross_slide_pcs`` components of the patient's
    #: mean tile and their products with ``cross_omics_pcs`` omics components
    cross: bool = False
    cross_slide_pcs: int = 8
    cross_omics_pcs: int = 4
    #: > 0: the slide side of ``cross`` is instead the patient's shares of this many tile
    #: prototypes (k-means of the training patients' tiles; each tile counts for its nearest)
    cross_prototypes: int = 0
    contrastive: float = 0.0  # weight of the slide <-> omics InfoNCE loss (training only)
    temperature: float = 0.1  # of the contrastive loss

    def validate(self) -> FusionSpec:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.conv not in ("gatv2", "hgt"):
            raise ConfigError(f"fusion conv must be gatv2 or hgt, got {self.conv!r}")
        if not self.modalities:
            raise ConfigError("fusion needs at least one modality (slides, omics or clinical)")
        if self.coattention and self.fusion != "graph":
            raise ConfigError(
                "fusion_kwargs coattention needs --fusion graph (gene-group nodes attend over "
                f"tiles), got --fusion {self.fusion}"
            )
        if self.cross and not (self.wide and {"slide", "omics"} <= set(self.modalities)):
            raise ConfigError(
                "fusion_kwargs cross needs the wide part (graph fusion) with slides and omics"
            )
        if self.cross and min(self.cross_slide_pcs, self.cross_omics_pcs) < 1:
            raise ConfigError("fusion_kwargs cross_slide_pcs and cross_omics_pcs must be >= 1")
        if self.cross_prototypes and (not self.cross or self.cross_prototypes < 2):
            raise ConfigError(
                "fusion_kwargs cross_prototypes must be >= 2 and needs cross: true (got "
                f"cross_prototypes {self.cross_prototypes}, cross {self.cross})"
            )
        if self.contrastive < 0 or self.temperature <= 0:
            raise ConfigError("fusion_kwargs contrastive must be >= 0 and temperature > 0")
        if self.hidden % self.heads:
            raise ConfigError(f"fusion hidden ({self.hidden}) must be a multiple of heads")
        return self


def _snn(n_in: int, h: int, p: float) -> nn.Sequential:
    """A self-normalising block (SELU + alpha dropout), the usual omics encoder."""
    return nn.Sequential(nn.Linear(n_in, h), nn.SELU(), nn.AlphaDropout(p), nn.Linear(h, h))


class FusionNet(nn.Module):
    """Encoders per modality, then one of :data:`FUSIONS`, then a head.

    ``forward(batch, tiles=None, keep=None)`` takes a batched ``HeteroData`` (see
    :func:`wsimm.fusion.build_graphs`), the tiles of its slide nodes (``(x, slide_of_tile)``,
    slides in the batch's node order) when slides are used, and ``keep``: node type -> bool
    per node, the nodes that take part (modality dropout, or a modality removed at test time).
    """

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__()
        self.spec = spec.validate()
        self.mc = False  # Monte Carlo dropout at test time (see mc_dropout)
        h, p = spec.hidden, spec.dropout
        self.mods = list(spec.modalities)
        self.n_outputs = spec.n_outputs
        if "omics" in self.mods:
            self.kind_nets = nn.ModuleList(_snn(n, h, p) for n in spec.kind_genes)
            self.kind_emb = nn.Embedding(max(1, len(spec.kind_genes)), h)
        if "clinical" in self.mods:
            self.var_emb = nn.Embedding(max(1, spec.n_clinical), h)
            self.num_w = nn.Embedding(max(1, spec.n_clinical), h)
            self.slot_emb = nn.Embedding(max(1, spec.n_slots), h)
            self.clin_mlp = nn.Sequential(nn.ELU(), nn.Linear(h, h))
        #: gene-group <-> tile co-attention: only with slides and omics in a graph fusion
        self.coattn = bool(spec.coattention) and {"slide", "omics"} <= set(self.mods)
        if self.coattn:
            self.tile_in = nn.Sequential(nn.Linear(spec.slide_dim, h), nn.ELU(), nn.LayerNorm(h))
            self.co_q = nn.Linear(h, h)
            self.co_k = nn.Linear(h, h)
            self.co_v = nn.Linear(h, h)
            self.co_bias = nn.Parameter(torch.tensor(-2.0))  # attention starts sparse
            self.co_out = nn.Linear(h, h)
            self.back_v = nn.Linear(h, h)
            self.back_out = nn.Linear(h, h)

        #: contrastive alignment of a patient's slide and omics embeddings
        self.align = float(spec.contrastive) > 0 and {"slide", "omics"} <= set(self.mods)
        if self.align:
            self.align_slide = nn.Linear(h, h)
            self.align_omics = nn.Linear(h, h)
        if "slide" in self.mods:
            from wsimm.mil import create_model

            self.mil = create_model(  # only its pooling is used: no BagNorm before a head
                spec.slide_model,
                h if self.coattn else spec.slide_dim,
                1,
                **{"bag_norm": False, **(spec.slide_model_kwargs or {})},
            )
            self.slide_proj = nn.Linear(self.mil.embedding_shape().numel(), h)

        if spec.fusion == "graph":
            self._build_graph(spec)
        else:
            k = len(self.mods)
            flat = {
                "omics": h * max(1, len(spec.kind_genes)),
                "clinical": h * max(1, spec.n_clinical),
                "slide": h,
            }
            self.summary = nn.ModuleDict(
                {
                    m: nn.Sequential(nn.Linear(flat[m], h), nn.ELU(), nn.Dropout(p))
                    for m in self.mods
                }
            )
            if spec.fusion == "late":
                self.heads_m = nn.ModuleDict({m: nn.Linear(h, spec.n_outputs) for m in self.mods})
            elif spec.fusion == "concat":
                self.head = self._head(k * h + k)
            else:  # kronecker (PathomicFusion): gated, 1-appended modality vectors
                d = spec.kron_dim
                self.gates = nn.ModuleDict(
                    {m: nn.Sequential(nn.Linear(h, d), nn.Sigmoid()) for m in self.mods}
                )
                self.reduce = nn.ModuleDict({m: nn.Linear(h, d) for m in self.mods})
                self.head = self._head((d + 1) ** k)
        if spec.wide:
            self._build_wide(spec)

    def _build_wide(self, spec: FusionSpec) -> None:
        """Buffers of the wide (linear) part, filled by :meth:`set_wide`; the deep part's last
        layer starts at zero, so training starts from the linear model and learns what it
        misses."""
        K = spec.n_outputs
        z = torch.zeros
        self.register_buffer("wide_bias", z(K))
        if "clinical" in self.mods:
            self.register_buffer("wide_num", z(max(1, spec.n_clinical), K))
            self.register_buffer("wide_cat", z(max(1, spec.n_slots), K))
        if "omics" in self.mods:
            self.wide_assays = list(spec.wide_genes or {})
            for i, a in enumerate(self.wide_assays):
                self.register_buffer(f"wide_omics_{i}", z(spec.wide_genes[a], K))  # type: ignore[index]
            self.register_buffer("wide_shift", z(K))
        if spec.cross:  # sizes fixed by the spec; components a fold cannot fit stay at 0
            S, C, D = spec.cross_slide_pcs, spec.cross_omics_pcs, spec.slide_dim
            P = spec.cross_prototypes
            if P:  # per tile, the one-hot of its nearest prototype; standardised shares
                self.register_buffer("wide_protos", z(P, D))
                S = D = P
            self.register_buffer("wide_slide_mean", z(D))
            self.register_buffer("wide_slide_comp", z(D, S))
            self.register_buffer("wide_slide_w", z(S, K))
            for i, a in enumerate(self.wide_assays):
                self.register_buffer(f"wide_cross_omics_{i}", z(spec.wide_genes[a], C))  # type: ignore[index]
            self.register_buffer("wide_cross_shift", z(C))
            self.register_buffer("wide_cross_w", z(S * C, K))
        last = [self.head[-1]] if hasattr(self, "head") else list(self.heads_m.values())
        for layer in last:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_wide(self, w) -> None:
        """Load a :class:`~wsimm.fusion.WideWeights` (e.g. from
        :meth:`wsimm.fusion.LinearBaseline.wide_weights`) into the wide part."""

        def put(name: str, value) -> None:
            buf = getattr(self, name)
            v = torch.as_tensor(np.asarray(value), dtype=buf.dtype).reshape(buf.shape)
            buf.copy_(v.to(buf.device))

        put("wide_bias", w.bias)
        if "clinical" in self.mods:
            put("wide_num", w.num if len(w.num) else np.zeros(tuple(self.wide_num.shape)))
            put("wide_cat", w.cat if len(w.cat) else np.zeros(tuple(self.wide_cat.shape)))
        if "omics" in self.mods:
            for i, a in enumerate(self.wide_assays):
                name = f"wide_omics_{i}"
                put(name, w.omics.get(a, np.zeros(tuple(getattr(self, name).shape))))
            put("wide_shift", w.omics_shift)
        if self.spec.cross:
            self._put_cross(w)

    def _put_cross(self, w) -> None:
        """The slide and cross terms of ``w`` into the (fixed-size) buffers, zero-padded."""
        names = ["wide_slide_mean", "wide_slide_comp", "wide_slide_w", "wide_cross_shift"]
        names += [f"wide_cross_omics_{i}" for i in range(len(self.wide_assays))]
        for name in [*names, "wide_cross_w"]:
            getattr(self, name).zero_()
        if w.slide_comp is None:  # fitted without slides: no slide terms
            return

        def put(name: str, value) -> None:
            buf = getattr(self, name)
            v = torch.as_tensor(np.asarray(value), dtype=buf.dtype).to(buf.device)
            buf[tuple(slice(0, n) for n in v.shape)] = v

        S, C = w.slide_comp.shape[1], w.cross_shift.shape[0]
        put("wide_slide_mean", w.slide_mean)
        put("wide_slide_comp", w.slide_comp)
        put("wide_slide_w", w.slide_w)
        put("wide_cross_shift", w.cross_shift)
        for i, a in enumerate(self.wide_assays):
            if a in w.cross_omics:
                put(f"wide_cross_omics_{i}", w.cross_omics[a])
        P = self.spec.cross_prototypes
        if P:
            if w.prototypes is None or len(w.prototypes) != P:
                raise ValueError(f"the wide part was fitted without {P} tile prototypes")
            put("wide_protos", w.prototypes)
        full = np.zeros(
            (P or self.spec.cross_slide_pcs, self.spec.cross_omics_pcs, w.cross_w.shape[1])
        )
        full[:S, :C] = np.asarray(w.cross_w).reshape(S, C, -1)
        put("wide_cross_w", full.reshape(-1, full.shape[2]))

    def wide_terms(
        self,
        data,
        keep: dict[str, Tensor] | None = None,
        B: int | None = None,
        slide_mean: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The wide part's output ``(B, K)`` per modality (and ``bias``); a modality whose
        nodes are all left out (dropout, removal, absence) adds nothing. With ``cross``,
        ``slide_mean`` is each patient's mean tile ``(B, D)`` and whether it has one ``(B,)``
        (:meth:`patient_tile_mean`), giving ``slide`` and ``cross`` (slide x omics) terms."""
        keep = keep or {}
        B = int(data.num_graphs) if B is None else B
        dev = self.patient_device
        out = {"bias": self.wide_bias.expand(B, -1)}
        if "clinical" in self.mods:
            c = torch.zeros(B, self.spec.n_outputs, device=dev)
            st = data["clinical"]
            if st.num_nodes:
                v = self.wide_num[st.var] * st.value[:, None] + self.wide_cat[st.slot]
                k = keep.get("clinical")
                c = c.index_add(0, st.batch, v if k is None else v * k[:, None])
            out["clinical"] = c
        if "omics" in self.mods:
            o = torch.zeros(B, self.spec.n_outputs, device=dev)
            st = data["gene_group"]
            has = torch.zeros(B, device=dev)  # per patient: takes part with its omics
            if st.num_nodes:
                k = keep.get("gene_group", torch.ones(st.num_nodes, dtype=torch.bool, device=dev))
                has = has.index_fill_(0, st.batch[k], 1.0)
                o = o - self.wide_shift
                for i, a in enumerate(self.wide_assays):
                    o = o + getattr(data, f"omics_{a}") @ getattr(self, f"wide_omics_{i}")
                o = o * has[:, None]
            out["omics"] = o
            if self.spec.cross and slide_mean is not None:
                m, has_s = slide_mean
                sl, cr = self._slide_cross(m, self._cross_omics(data, B))
                out["slide"] = sl * has_s[:, None]
                out["cross"] = cr * (has_s * has)[:, None]
        return out

    def _cross_omics(self, data, B: int) -> Tensor:
        """The omics components the ``cross`` terms multiply, ``(B, C)``."""
        q = -self.wide_cross_shift.expand(B, -1)
        for i, a in enumerate(self.wide_assays):
            q = q + getattr(data, f"omics_{a}") @ getattr(self, f"wide_cross_omics_{i}")
        return q

    def _slide_cross(self, f: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """The slide and slide x omics terms ``(n, K)`` of slide features ``f`` (a patient's
        mean tile or prototype shares, or one tile's) with omics components ``q`` (n, C)."""
        s = (f - self.wide_slide_mean) @ self.wide_slide_comp  # (n, S)
        x = (s[:, :, None] * q[:, None, :]).flatten(1)  # (n, S * C), slide major
        return s @ self.wide_slide_w, x @ self.wide_cross_w

    def tile_cross_terms(self, data, tiles) -> Tensor:
        """Per tile ``(n, K)``: its part of the ``cross`` wide part's slide and slide x omics
        terms (the terms are linear in the tiles, so a one-slide patient's terms are the mean
        of its tiles'): which tiles the patient's omics make count, and in which direction."""
        tx, tb = tiles
        if self.spec.cross_prototypes:
            tx = self._nearest_prototype(tx)
        B, owner = int(data.num_graphs), data["slide"].batch[tb]
        st = data["gene_group"]
        has = torch.zeros(B, device=tx.device)  # a patient without omics has no crosses
        if st.num_nodes:
            has = has.index_fill_(0, st.batch, 1.0)
        sl, cr = self._slide_cross(tx, self._cross_omics(data, B)[owner])
        return sl + cr * has[owner][:, None]

    def _nearest_prototype(self, tx: Tensor) -> Tensor:
        """Each tile's one-hot of its nearest ``cross_prototypes`` prototype, ``(n, P)``."""
        pr = self.wide_protos.to(tx.dtype)
        d2 = (pr * pr).sum(1)[None, :] - 2.0 * tx @ pr.T  # + |x|^2: the same per tile
        return torch.nn.functional.one_hot(d2.argmin(1), pr.shape[0]).to(tx.dtype)

    def patient_tile_mean(self, data, tiles, keep: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Each patient's mean tile (the mean of its kept slides' tile means) ``(B, D)`` and
        whether it has a kept slide ``(B,)``, from the tiles given to :meth:`forward`; with
        ``cross_prototypes``, the mean of the tiles' nearest-prototype one-hots instead (each
        slide's prototype shares, averaged over the patient's kept slides) ``(B, P)``."""
        B, dev = int(data.num_graphs), self.patient_device
        D = self.spec.cross_prototypes or self.spec.slide_dim
        st = data["slide"]
        if tiles is None or not st.num_nodes:
            return torch.zeros(B, D, device=dev), torch.zeros(B, device=dev)
        tx, tb = tiles
        if self.spec.cross_prototypes:  # the nearest prototype's one-hot (needs cross)
            tx = self._nearest_prototype(tx)
        n = int(st.num_nodes)
        cnt = torch.zeros(n, device=dev).index_add_(0, tb, torch.ones_like(tb, dtype=tx.dtype))
        sm = torch.zeros(n, D, device=dev).index_add_(0, tb, tx) / cnt.clamp(min=1)[:, None]
        k = keep.get("slide", torch.ones(n, dtype=torch.bool, device=dev)) & (cnt > 0)
        k = k.to(tx.dtype)
        ns = torch.zeros(B, device=dev).index_add_(0, st.batch, k)
        pm = torch.zeros(B, D, device=dev).index_add_(0, st.batch, sm * k[:, None])
        return pm / ns.clamp(min=1)[:, None], (ns > 0).to(tx.dtype)

    def _head(self, n_in: int) -> nn.Sequential:
        h, p = self.spec.hidden, self.spec.dropout
        return nn.Sequential(
            nn.Linear(n_in, h), nn.ELU(), nn.Dropout(p), nn.Linear(h, self.spec.n_outputs)
        )

    def _build_graph(self, spec: FusionSpec) -> None:
        from torch_geometric.nn import GATv2Conv, HeteroConv, HGTConv

        h = spec.hidden
        present = {MODALITY_NODE[m] for m in self.mods} | {"patient"}
        self.edge_types = [et for et in EDGE_TYPES if et[0] in present and et[2] in present]
        self.node_types = sorted(present)
        self.patient0 = nn.Parameter(torch.zeros(1, h))
        self.convs = nn.ModuleList()
        for _ in range(spec.layers):
            if spec.conv == "hgt":
                self.convs.append(
                    HGTConv(-1, h, (self.node_types, self.edge_types), heads=spec.heads)
                )
            else:
                self.convs.append(
                    HeteroConv(
                        {
                            et: GATv2Conv(
                                (-1, -1),
                                h // spec.heads,
                                heads=spec.heads,
                                add_self_loops=False,
                                dropout=spec.dropout / 2,
                            )
                            for et in self.edge_types
                        },
                        aggr="sum",
                    )
                )
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(h) for t in self.node_types}) for _ in self.convs
        )
        self.att_v = nn.Linear(h, h)
        self.att_u = nn.Linear(h, h)
        self.att_w = nn.Linear(h, 1)
        self.head = self._head(2 * h)

    # -- encoders ---------------------------------------------------------------------------
    def _encode(
        self, data, tiles, keep: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None, CoAttention | None]:
        """Node features ``(n_nodes, h)`` per node type, the per-kind omics embeddings
        ``(K, B, h)``, the slide model's auxiliary loss and the co-attention (if any)."""
        x: dict[str, Tensor] = {}
        kind_all, aux, co = None, None, None
        B = int(data.num_graphs)
        dev = self.patient_device
        if "omics" in self.mods:
            outs = []
            for k, net in enumerate(self.kind_nets):
                xa = getattr(data, f"omics_{self.spec.assays[k]}")[:, self._genes_of(k)]
                if hasattr(self, f"_proj_{k}"):
                    xa = xa @ getattr(self, f"_proj_{k}")
                outs.append(net(xa) + self.kind_emb.weight[k])
            kind_all = torch.stack(outs) if outs else torch.zeros(0, B, self.spec.hidden)
            st = data["gene_group"]
            x["gene_group"] = kind_all[st.kind, st.batch] if st.num_nodes else self._empty(dev)
        if "clinical" in self.mods:
            st = data["clinical"]
            if st.num_nodes:
                e = self.var_emb(st.var) + st.value[:, None] * self.num_w(st.var)
                x["clinical"] = self.clin_mlp(e + self.slot_emb(st.slot))
            else:
                x["clinical"] = self._empty(dev)
        if "slide" in self.mods:
            st = data["slide"]
            if st.num_nodes and "slide" in keep and not bool(keep["slide"].any()):
                x["slide"] = torch.zeros(int(st.num_nodes), self.spec.hidden, device=dev)
            elif st.num_nodes:
                if tiles is None:
                    raise ConfigError("this fusion network uses slides: pass their tiles")
                tx, tb = tiles
                if self.coattn:
                    x["gene_group"], tx, co = self._coattend(data, x["gene_group"], tx, tb, keep)
                emb, _, aux = self.mil.pool(tx, tb, int(st.num_nodes), None)
                if self.mil.bag_norm is not None:  # model_kwargs bag_norm: true
                    emb = self.mil.bag_norm(emb)
                x["slide"] = self.slide_proj(emb.flatten(1))
            else:
                x["slide"] = self._empty(dev)
        return x, kind_all, aux, co

    def _coattend(self, data, xg: Tensor, tx: Tensor, tb: Tensor, keep: dict[str, Tensor]):
        """Each gene-group node attends over its patient's tiles (sigmoid attention averaged
        over the tiles, so the result tells both *which* tiles the group looks at and *how
        many* there are), and each tile attends back over its patient's gene groups (softmax
        over the groups, added to the tile before the slide model pools it). Returns the
        updated gene-group nodes, tiles ``(n, h)`` and the attention."""
        from torch_geometric.utils import to_dense_batch

        B, h = int(data.num_graphs), self.spec.hidden
        t = self.tile_in(tx)
        owner_t = data["slide"].batch[tb]
        owner_g = data["gene_group"].batch
        mt = keep["slide"][tb] if "slide" in keep else torch.ones_like(owner_t, dtype=torch.bool)
        mg = keep.get("gene_group", torch.ones_like(owner_g, dtype=torch.bool))
        Q, gmask = to_dense_batch(self.co_q(xg), owner_g, batch_size=B)  # (B, G, h)
        K, tmask = to_dense_batch(self.co_k(t), owner_t, batch_size=B)  # (B, T, h)
        V, _ = to_dense_batch(self.co_v(t), owner_t, batch_size=B)
        g_on, _ = to_dense_batch(mg, owner_g, batch_size=B, fill_value=False)
        t_on, _ = to_dense_batch(mt, owner_t, batch_size=B, fill_value=False)
        S = Q @ K.transpose(1, 2) / h**0.5  # (B, G, T)
        A = torch.sigmoid(S + self.co_bias) * t_on[:, None, :]
        n_t = t_on.sum(1).clamp(min=1).to(A.dtype)  # tiles per patient that take part
        pooled = (A @ V) / n_t[:, None, None]  # (B, G, h)
        xg = xg + self.co_out(pooled[gmask]) * mg[:, None]
        # tiles attend back over the gene groups their patient has (none: no update)
        St = S.transpose(1, 2).masked_fill(~g_on[:, None, :], float("-inf"))  # (B, T, G)
        has_g = g_on.any(1)
        Wt = torch.softmax(St.masked_fill(~has_g[:, None, None], 0.0), dim=2)
        ctx = (Wt @ self.back_v(Q)) * has_g[:, None, None]  # (B, T, h)
        t = t + self.back_out(ctx[tmask])
        return xg, t, CoAttention(A, gmask & g_on, tmask & t_on)

    def _genes_of(self, k: int) -> Tensor:
        # gene positions of kind k inside its assay's matrix, set by the trainer
        return getattr(self, f"_genes_{k}")

    def set_gene_index(self, index: list[list[int]], proj: list | None = None) -> None:
        """Positions of each kind's genes in its assay's columns and, optionally, a fixed
        projection per kind (genes x inputs) applied first (buffers, saved with the weights)."""
        for k, idx in enumerate(index):
            self.register_buffer(f"_genes_{k}", torch.as_tensor(idx, dtype=torch.long))
            if proj:
                self.register_buffer(f"_proj_{k}", torch.as_tensor(proj[k], dtype=torch.float32))

    @property
    def patient_device(self) -> torch.device:
        return next(self.parameters()).device

    def _empty(self, dev) -> Tensor:
        return torch.zeros(0, self.spec.hidden, device=dev)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, data, tiles=None, keep: dict[str, Tensor] | None = None) -> FusionOutput:
        keep = keep or {}
        x, kind_all, aux, co = self._encode(data, tiles, keep)
        B = int(data.num_graphs)
        weights = None
        if self.spec.fusion == "graph":
            logits, weights = self._graph_forward(data, x, keep, B)
        else:
            logits = self._flat_forward(data, x, kind_all, keep, B)
        wide = None
        if self.spec.wide:
            sm = self.patient_tile_mean(data, tiles, keep) if self.spec.cross else None
            wide = self.wide_terms(data, keep, B, sm)
        if wide is not None:
            logits = logits + sum(wide.values())
        align = self._align_loss(data, x, keep, B) if self.align and self.training else None
        return FusionOutput(logits, weights, aux, wide, co, align)

    def _align_loss(self, data, x, keep, B) -> Tensor | None:
        """InfoNCE between the slide and the omics embedding of the same patient (the mean of
        its slide nodes / gene-group nodes before message passing), symmetric, over the
        batch's patients that have both; ``None`` with fewer than two such patients."""
        dev = self.patient_device

        def mean_of(t: str, proj: nn.Module) -> tuple[Tensor, Tensor]:
            st, v = data[t], x[t]
            m = keep.get(t, torch.ones(v.shape[0], dtype=torch.bool, device=dev))
            if v.shape[0] == 0:
                return torch.zeros(B, v.shape[1], device=dev), torch.zeros(B, device=dev)
            cnt = torch.zeros(B, device=dev).index_add_(0, st.batch, m.float())
            s = torch.zeros(B, v.shape[1], device=dev).index_add_(0, st.batch, v * m[:, None])
            return proj(s / cnt.clamp(min=1)[:, None]), cnt

        zs, ns = mean_of("slide", self.align_slide)
        zo, no = mean_of("gene_group", self.align_omics)
        both = (ns > 0) & (no > 0)
        if int(both.sum()) < 2:
            return None
        zs = nn.functional.normalize(zs[both], dim=1)
        zo = nn.functional.normalize(zo[both], dim=1)
        sim = zs @ zo.T / self.spec.temperature
        target = torch.arange(sim.shape[0], device=dev)
        ce = nn.functional.cross_entropy
        return (ce(sim, target) + ce(sim.T, target)) / 2

    def _graph_forward(self, data, x, keep, B):
        from torch_geometric.utils import softmax

        dev = self.patient_device
        x = dict(x)
        x["patient"] = self.patient0.expand(B, -1)
        ei = {}
        for et in self.edge_types:
            e = data[et].edge_index
            s, _, d = et
            m = torch.ones(e.shape[1], dtype=torch.bool, device=e.device)
            if s in keep:
                m &= keep[s][e[0]]
            if d in keep:
                m &= keep[d][e[1]]
            ei[et] = e[:, m]
        for conv, norms in zip(self.convs, self.norms, strict=True):
            out = conv(x, ei)
            x = {
                t: norms[t](
                    v
                    + nn.functional.dropout(
                        nn.functional.elu(out[t]), self.spec.dropout, self.training or self.mc
                    )
                )
                if t in out and out[t] is not None
                else v
                for t, v in x.items()
            }
        # readout: gated attention over the patient's modality nodes
        feats, owners, types = [], [], []
        for t in NODE_TYPES:
            if t not in x or t == "patient":
                continue
            n = x[t].shape[0]
            if n == 0:
                continue
            m = keep.get(t, torch.ones(n, dtype=torch.bool, device=dev))
            feats.append(x[t][m])
            owners.append(data[t].batch[m])
            types.append((t, m))
        hp = x["patient"]
        weights: dict[str, Tensor] = {}
        if feats:
            f, o = torch.cat(feats), torch.cat(owners)
            a = self.att_w(torch.tanh(self.att_v(f)) * torch.sigmoid(self.att_u(f))).squeeze(1)
            a = softmax(a, o, num_nodes=B)
            pooled = torch.zeros(B, f.shape[1], device=dev).index_add_(0, o, a[:, None] * f)
            start = 0
            for t, m in types:
                w = torch.zeros(m.shape[0], device=dev)
                n_kept = int(m.sum())
                w[m] = a[start : start + n_kept]
                weights[t] = w
                start += n_kept
        else:
            pooled = torch.zeros_like(hp)
        return self.head(torch.cat([hp, pooled], 1)), weights

    def _flat_forward(self, data, x, kind_all, keep, B):
        h = self.spec.hidden
        dev = self.patient_device
        summ, present = {}, {}
        for m in self.mods:
            t = MODALITY_NODE[m]
            st = data[t]
            n = x[t].shape[0]
            k = keep.get(t, torch.ones(n, dtype=torch.bool, device=dev))
            owner = st.batch[k] if n else torch.zeros(0, dtype=torch.long, device=dev)
            has = torch.zeros(B, device=dev).index_fill_(0, owner, 1.0)
            if m == "slide":
                xs = x[t][k]
                cnt = torch.zeros(B, device=dev).index_add_(
                    0, owner, torch.ones_like(owner, dtype=torch.float)
                )
                flat = (
                    torch.zeros(B, h, device=dev).index_add_(0, owner, xs)
                    / cnt.clamp(min=1)[:, None]
                )
            else:
                slot = st.kind[k] if m == "omics" else st.var[k]
                width = len(self.spec.kind_genes) if m == "omics" else self.spec.n_clinical
                flat = torch.zeros(B, max(1, width), h, device=dev)
                flat[owner, slot] = x[t][k]
                flat = flat.flatten(1)
            summ[m] = self.summary[m](flat) * has[:, None]
            present[m] = has
        if self.spec.fusion == "late":
            num = sum(self.heads_m[m](summ[m]) * present[m][:, None] for m in self.mods)
            den = sum(present[m] for m in self.mods)
            return num / den.clamp(min=1)[:, None]
        if self.spec.fusion == "concat":
            z = torch.cat(
                [summ[m] for m in self.mods] + [torch.stack([present[m] for m in self.mods], 1)], 1
            )
            return self.head(z)
        # kronecker: outer product of [gate * reduce(summary); 1] over modalities
        z = None
        for m in self.mods:
            v = self.gates[m](summ[m]) * self.reduce[m](summ[m]) * present[m][:, None]
            v = torch.cat([v, torch.ones(B, 1, device=dev)], 1)
            z = v if z is None else (z[:, :, None] * v[:, None, :]).flatten(1)
        return self.head(z)


def mc_dropout(net: nn.Module, on: bool = True) -> None:
    """Monte Carlo dropout: with ``on``, an eval-mode network keeps its dropout layers (and
    GATv2's attention dropout) sampling while everything else (layer norms, BagNorm's
    running statistics, modality dropout) stays in eval mode; ``on=False`` puts it back."""
    from torch_geometric.nn import GATv2Conv

    for m in net.modules():
        if isinstance(m, (nn.Dropout, nn.AlphaDropout, GATv2Conv)):
            m.train(on)
        if isinstance(m, FusionNet):
            m.mc = on


class FusionEnsemble(nn.Module):
    """Networks trained from different seeds on the same fold; logits and readout weights
    are averaged over members."""

    def __init__(self, members: list[FusionNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mods = members[0].mods
        self.n_outputs = members[0].n_outputs
        self.spec = members[0].spec

    def forward(self, data, tiles=None, keep: dict[str, Tensor] | None = None) -> FusionOutput:
        outs = [m(data, tiles, keep=keep) for m in self.members]
        logits = torch.stack([o.logits for o in outs]).mean(0)
        weights = None
        if outs[0].weights:
            weights = {
                t: torch.stack([o.weights[t] for o in outs]).mean(0) for t in outs[0].weights
            }
        co = None
        if outs[0].coattn is not None:  # same batch, same masks: average the attention
            c0 = outs[0].coattn
            co = c0._replace(attn=torch.stack([o.coattn.attn for o in outs]).mean(0))
        # every member carries the same fold's linear part
        return FusionOutput(logits, weights, None, outs[0].wide, co)
