"""Patch encoders: a registry of models that turn tiles into embeddings."""

from __future__ import annotations

from wsimm.encoders._registry import (
    Encoder,
    EncoderCfg,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = ["Encoder", "EncoderCfg", "create_encoder", "list_encoders", "register_encoder"]
