"""One torch-geometric ``HeteroData`` per patient.

Node types: ``slide`` (one per slide), ``gene_group`` (one per gene group and assay the patient
was measured on), ``clinical`` (one per clinical variable the patient has a value for) and one
``patient`` hub. A modality the patient lacks simply has no nodes: nothing is zero-filled.

Graph-level attributes carry what the node encoders read: ``omics_<assay>`` ``(1, genes)``
standardised values (batched to ``(B, genes)``) and ``pidx`` the patient's position in the
list the graphs were built for.
"""

from __future__ import annotations

import numpy as np

from wsimm.fusion._inputs import Modalities, Preprocessor

__all__ = ["EDGE_TYPES", "NODE_TYPES", "build_graphs", "kind_adjacency"]

NODE_TYPES = ("slide", "gene_group", "clinical")
EDGE_TYPES = (
    ("slide", "to", "patient"),
    ("gene_group", "to", "patient"),
    ("clinical", "to", "patient"),
    ("slide", "to", "gene_group"),
    ("gene_group", "to", "slide"),
    ("gene_group", "shares", "gene_group"),
    # the hub answers back, so every node type is updated with the patient's context
    ("patient", "about", "slide"),
    ("patient", "about", "gene_group"),
    ("patient", "about", "clinical"),
)


def kind_adjacency(pre: Preprocessor) -> np.ndarray:
    """``[i, j]`` True when gene-group kinds i and j (i != j) share genes (same assay) or are
    the same group measured by two assays."""
    k = len(pre.kinds)
    adj = np.zeros((k, k), bool)
    sets = [set(genes) for _, _, genes in pre.kinds]
    for i, (gi, ai, _) in enumerate(pre.kinds):
        for j, (gj, aj, _) in enumerate(pre.kinds):
            if i != j and ((ai == aj and sets[i] & sets[j]) or (gi == gj and ai != aj)):
                adj[i, j] = True
    return adj


def _edges(n_src: int, n_dst: int):
    import torch

    if n_src == 0 or n_dst == 0:
        return torch.zeros((2, 0), dtype=torch.long)
    s, d = np.meshgrid(np.arange(n_src), np.arange(n_dst), indexing="ij")
    return torch.as_tensor(np.stack([s.ravel(), d.ravel()]), dtype=torch.long)


def build_graphs(
    mods: Modalities,
    pre: Preprocessor,
    pids: list[str],
    *,
    slide_index: dict[str, int] | None = None,
    use: tuple[str, ...] = ("slide", "omics", "clinical"),
) -> list:
    """The patient graphs of ``pids`` (in that order) for the modalities in ``use``.

    ``slide_index`` maps slide id -> a global index stored on each slide node (``sidx``) so the
    caller can fetch the slide's tiles for a batch of graphs.
    """
    import torch
    from torch_geometric.data import HeteroData

    adj = kind_adjacency(pre)
    assays = list(pre.genes) if ("omics" in use and mods.omics is not None) else []
    mats = {a: pre.omics_matrix(mods.omics, a, pids) for a in assays}  # type: ignore[arg-type]
    kinds_of = {a: [k for k, (_, ka, _) in enumerate(pre.kinds) if ka == a] for a in assays}
    graphs = []
    for i, pid in enumerate(pids):
        g = HeteroData()
        g.pidx = torch.tensor([i])
        # gene-group nodes: the kinds of every assay this patient was measured on
        kinds: list[int] = []
        for a in assays:
            z, present = mats[a]
            setattr(g, f"omics_{a}", torch.from_numpy(z[i : i + 1]))
            if present[i]:
                kinds += kinds_of[a]
        g["gene_group"].kind = torch.as_tensor(kinds, dtype=torch.long)
        g["gene_group"].num_nodes = len(kinds)
        # clinical nodes: one per variable with a value
        if "clinical" in use and mods.clinical is not None:
            var, val, slot = pre.clinical_nodes(mods.clinical, pid)
        else:
            var, val, slot = [], [], []
        g["clinical"].var = torch.as_tensor(var, dtype=torch.long)
        g["clinical"].value = torch.as_tensor(val, dtype=torch.float32)
        g["clinical"].slot = torch.as_tensor(slot, dtype=torch.long)
        g["clinical"].num_nodes = len(var)
        # slide nodes
        sl = mods.slides.get(pid, []) if ("slide" in use and slide_index is not None) else []
        g["slide"].sidx = torch.as_tensor([slide_index[s] for s in sl], dtype=torch.long)  # type: ignore[index]
        g["slide"].num_nodes = len(sl)
        g["patient"].num_nodes = 1

        n = {"slide": len(sl), "gene_group": len(kinds), "clinical": len(var), "patient": 1}
        for et in EDGE_TYPES:
            src, _, dst = et
            if et[1] == "shares":
                a = adj[np.ix_(kinds, kinds)] if kinds else np.zeros((0, 0), bool)
                s, d = np.nonzero(a)
                g[et].edge_index = torch.as_tensor(np.stack([s, d]), dtype=torch.long)
            else:
                g[et].edge_index = _edges(n[src], n[dst])
        graphs.append(g)
    return graphs
