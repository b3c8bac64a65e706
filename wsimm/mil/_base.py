"""The interface every MIL model implements, and the model registry."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from wsimm.errors import ConfigError
from wsimm.mil._ops import segment_mean

__all__ = ["BagNorm", "MILModel", "MILOutput", "create_model", "list_models", "register_model"]


class BagNorm(nn.Module):
    """Standardise bag embeddings feature by feature across the bags of a training batch
    (batch normalisation without an affine part, over the bag axis; running statistics at
    evaluation).

    Why: a bag embedding is an average over hundreds of tiles, so bags differ from one another
    by a small fraction of the tiles' own spread. Fed as is, the head sees nearly constant
    inputs and needs many epochs to grow large enough to leave the flat start - the plateau in
    which early stopping kept epoch 0 on sparse-signal cohorts. Standardised, the between-bag
    differences reach the head at unit scale from the first step.

    A batch with fewer than two weighted bags uses (and leaves) the running statistics.
    ``weight`` (per bag, 0 or 1) drops bags from the statistics: torchrun's stand-in items.
    Under ``torch.distributed`` the sums are all-reduced (differentiably), so N processes
    normalise with the whole batch's statistics, as one process does.
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        # shaped like one bag embedding by create_model (or on the first call)
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))

    def reset(self, shape: tuple[int, ...] | torch.Size, like: Tensor | None = None) -> None:
        """Fresh statistics (mean 0, variance 1) for embeddings of ``shape``."""
        like = self.running_mean if like is None else like
        self.running_mean = like.new_zeros(shape)
        self.running_var = like.new_ones(shape)

    def forward(self, emb: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.running_mean.shape != emb.shape[1:]:
            self.reset(emb.shape[1:], emb)
        if self.training:
            w = emb.new_ones(len(emb)) if weight is None else weight.to(emb.dtype)
            n = _all_sum(w.sum().detach())
            if float(n) >= 2:
                w = w.view(-1, *([1] * (emb.dim() - 1)))
                m = _all_sum((w * emb).sum(0)) / n  # two passes: no cancellation in the variance
                var = _all_sum((w * (emb - m) ** 2).sum(0)) / n
                with torch.no_grad():  # the buffers keep their dtype under autocast
                    rm, rv = self.running_mean, self.running_var
                    rm.lerp_(m.detach().to(rm.dtype), self.momentum)
                    rv.lerp_((var.detach() * (n / (n - 1))).to(rv.dtype), self.momentum)
                return (emb - m) / torch.sqrt(var + self.eps)
        return (emb - self.running_mean) / torch.sqrt(self.running_var + self.eps)


def _all_sum(t: Tensor) -> Tensor:
    """``t`` summed over the processes of a ``torch.distributed`` job (differentiable), or
    ``t`` itself in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import warnings

        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():  # torch 2.10+ points to a private successor API
            warnings.filterwarnings("ignore", message=r".*all_reduce is deprecated")
            return all_reduce(t)
    return t


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
    averaged before the head (per-slide embeddings pooled per patient). ``weight`` (one per
    output row) marks the rows that count in :class:`BagNorm`'s batch statistics.
    """

    #: weight of ``aux_loss`` in the training loss
    aux_weight: float = 0.0

    def __init__(self, in_dim: int, n_outputs: int, bag_norm: bool = True) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.n_outputs = int(n_outputs)
        self.bag_norm = BagNorm() if bag_norm else None

    def pool(
        self, x: Tensor, batch: Tensor, n_bags: int, y: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def embedding_shape(self) -> torch.Size:
        """The shape of one bag embedding, from two zero tiles through :meth:`pool`."""
        was = self.training
        self.eval()
        p = next(self.parameters())
        with torch.no_grad():
            e, _, _ = self.pool(
                p.new_zeros(2, self.in_dim),
                torch.zeros(2, dtype=torch.long, device=p.device),
                1,
                None,
            )
        self.train(was)
        return e.shape[1:]

    def classify(self, emb: Tensor, weight: Tensor | None = None) -> Tensor:
        """Outputs from bag embeddings: :class:`BagNorm` (unless built with
        ``bag_norm=False``), then the head."""
        if self.bag_norm is not None:
            emb = self.bag_norm(emb, weight)
        return self.head_out(emb)

    def head_out(self, emb: Tensor) -> Tensor:
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
        weight: Tensor | None = None,
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
        return MILOutput(self.classify(emb, weight), emb, attn, aux)


_MODELS: dict[str, Callable[..., MILModel]] = {}


def register_model(name: str) -> Callable[[type[MILModel]], type[MILModel]]:
    """Class decorator: make a MIL model available as ``name``."""

    def deco(cls: type[MILModel]) -> type[MILModel]:
        _MODELS[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def check_model(name: str) -> None:
    """Refuse a name no MIL model is registered under, listing the close matches."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown MIL model {name!r}{hint}; choose one of {', '.join(list_models())}"
        )


def create_model(name: str, in_dim: int, n_outputs: int, **kwargs: Any) -> MILModel:
    """Build a registered MIL model; unknown names list the close matches."""
    check_model(name)
    try:
        model = _MODELS[name](in_dim, n_outputs, **kwargs)
    except (TypeError, ValueError) as e:  # an unknown option, or a value torch refuses
        raise ConfigError(f"MIL model {name!r}: bad options {kwargs} ({e})") from e
    if model.bag_norm is not None:  # shape BagNorm's statistics (before DDP or a state load)
        model.bag_norm.reset(model.embedding_shape())
    return model


def mlp_in(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """The tile projection every model starts with (Linear, ReLU, dropout)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
