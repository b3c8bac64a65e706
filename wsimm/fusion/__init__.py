"""Graph fusion of slides, omics and clinical data per patient (torch-geometric).

Each patient is a ``HeteroData`` graph with ``slide``, ``gene_group``, ``clinical`` and one
``patient`` node; absent modalities have no nodes. :class:`FusionNet` encodes every modality
(MIL over tiles for slides, a small network per gene group and assay, an embedding per clinical
variable) and joins them by heterogeneous attention into the patient hub (``graph``) or by the
usual late / concatenation / Kronecker fusions, which serve as baselines. Training and
evaluation live in :mod:`wsimm.train` (``wsimm train --fusion graph``).
"""

from wsimm.fusion._graph import EDGE_TYPES, NODE_TYPES, build_graphs, kind_adjacency
from wsimm.fusion._inputs import (
    ASSAYS,
    ClinicalSpec,
    Modalities,
    Omics,
    Preprocessor,
    check_gene_groups,
    infer_clinical_types,
    read_clinical,
    read_gene_groups,
    read_omics,
    reserved_reason,
)
from wsimm.fusion._linear import LinearBaseline, SlideTerms, WideWeights, design_matrix
from wsimm.fusion._model import (
    FUSIONS,
    FusionEnsemble,
    FusionNet,
    FusionOutput,
    FusionSpec,
    mc_dropout,
)

__all__ = [
    "ASSAYS",
    "EDGE_TYPES",
    "FUSIONS",
    "NODE_TYPES",
    "ClinicalSpec",
    "FusionEnsemble",
    "FusionNet",
    "FusionOutput",
    "FusionSpec",
    "LinearBaseline",
    "Modalities",
    "Omics",
    "Preprocessor",
    "SlideTerms",
    "WideWeights",
    "build_graphs",
    "check_gene_groups",
    "design_matrix",
    "infer_clinical_types",
    "kind_adjacency",
    "mc_dropout",
    "read_clinical",
    "read_gene_groups",
    "read_omics",
    "reserved_reason",
]
