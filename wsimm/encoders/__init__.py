"""Patch encoders: a registry of models that turn tiles into embeddings."""

from __future__ import annotations

from wsimm.encoders._registry import (
    Encoder,
    EncoderCfg,
    create_encoder,
    list_encoders,
    register_encoder,
)
from wsimm.encoders._torch import SPECS, ModelSpec, TorchEncoder
from wsimm.encoders._weights import load_state_dict, load_weights

__all__ = [
    "SPECS",
    "Encoder",
    "EncoderCfg",
    "ModelSpec",
    "TorchEncoder",
    "create_encoder",
    "list_encoders",
    "load_state_dict",
    "load_weights",
    "register_encoder",
]
