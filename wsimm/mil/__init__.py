"""Multiple-instance learning models over a slide's tile embeddings.

Every model returns a :class:`MILOutput` (logits or hazards, the bag embedding and per-tile
attention) and batches ragged bags without padding: tiles of several bags are concatenated and
a ``batch`` vector names each tile's bag. Models: ``mean``, ``max``, ``abmil``, ``abmil_gated``,
``clam_sb``, ``clam_mb``, ``transmil``; add one with :func:`register_model`.
"""

from __future__ import annotations

from wsimm.mil import abmil, clam, pooling, transmil  # noqa: F401  (registers the models)
from wsimm.mil._base import (
    BagNorm,
    MILModel,
    MILOutput,
    check_model,
    create_model,
    list_models,
    register_model,
)
from wsimm.mil._ops import segment_max, segment_mean, segment_softmax, segment_sum

__all__ = [
    "BagNorm",
    "MILModel",
    "MILOutput",
    "check_model",
    "create_model",
    "list_models",
    "register_model",
    "segment_max",
    "segment_mean",
    "segment_softmax",
    "segment_sum",
]
