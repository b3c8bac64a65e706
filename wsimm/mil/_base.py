"""The interface every MIL model implements, and the model registry."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from wsimm.errors import ConfigError
from wsimm.mil._ops import segment_mean

__all__ = ["MILModel", "MILOutput", "create_model", "list_models", "register_model"]


class MILOutput(NamedTuple):
    """What a MIL model returns for a batch of bags.

    ``logits``: ``(n_bags, n_outputs)`` class logits, hazard logits (discrete-time survival) or
    a risk (Cox, one output); one row per group when bags are grouped (patients).
    ``embedding``: ``(n_bags, ...)`` the bag embeddings before the head (grouped likewise).
    ``attention``: ``(N,)`` or ``(N, K)`` per tile, summing to one within its bag (per branch).
    ``aux_loss``: an extra training loss (CLAM's instance clustering) or ``None``.
    """

    logits: Tensor
    embedding: Tensor
    attention: Tensor
    aux_loss: Tensor | None


class MILModel(nn.Module):
    """Base class: ``pool`` turns tiles into bag embeddings and tile attention; ``classify``
    maps embeddings to outputs. Subclasses set ``embed_dim``.

    ``forward(x, batch, n_bags)`` takes the tiles of several bags concatenated (``batch`` gives
    each tile's bag); ``group`` optionally maps bags to patients whose bag embeddings are
    averaged before the head (per-slide embeddings pooled per patient).
    """

    #: weight of ``aux_loss`` in the training loss
    aux_weight: float = 0.0

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.n_outputs = int(n_outputs)

    def pool(
        self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def classify(self, emb: Tensor) -> Tensor:
        return self.head(emb)

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        n_bags: int | None = None,
        *,
        group: Tensor | None = None,
        n_groups: int | None = None,
        y: Tensor | None = None,
    ) -> MILOutput:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ConfigError(
                f"{type(self).__name__} expects tiles (N, {self.in_dim}), got {tuple(x.shape)}: "
                "the features come from another encoder than the one the model was built for"
            )
        if batch is None:
            batch = torch.zeros(len(x), dtype=torch.long, device=x.device)
            n_bags = 1
        assert n_bags is not None
        if y is not None and group is not None:
            y = y[group]  # each slide of a patient carries the patient's label
        emb, attn, aux = self.pool(x, batch, n_bags, y)
        if group is not None:
            emb = segment_mean(emb, group, int(n_groups or int(group.max()) + 1))
        return MILOutput(self.classify(emb), emb, attn, aux)


_MODELS: dict[str, Callable[..., MILModel]] = {}


def register_model(name: str) -> Callable[[type[MILModel]], type[MILModel]]:
    """Class decorator: make a MIL model available as ``name``."""

    def deco(cls: type[MILModel]) -> type[MILModel]:
        _MODELS[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, in_dim: int, n_outputs: int, **kwargs: Any) -> MILModel:
    """Build a registered MIL model; unknown names list the close matches."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown MIL model {name!r}{hint}; choose one of {', '.join(list_models())}"
        )
    try:
        return _MODELS[name](in_dim, n_outputs, **kwargs)
    except TypeError as e:
        raise ConfigError(f"MIL model {name!r}: bad options {kwargs} ({e})") from e


def mlp_in(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The tile projection every model starts with (Linear, ReLU, dropout)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
