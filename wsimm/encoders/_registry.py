"""Encoder registry: ``register_encoder`` / ``create_encoder`` / ``list_encoders``.

An encoder turns a batch of RGB uint8 tiles ``(B, H, W, 3)`` into embeddings ``(B, D)``. The
built-ins here are numpy-only and cost almost nothing (for coordinates-only runs, tests and
I/O benchmarks); torch/timm models register into the same table.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from wsimm.errors import ConfigError

__all__ = [
    "Encoder",
    "EncoderCfg",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]


@dataclass(frozen=True)
class EncoderCfg:
    """What an encoder expects and produces.

    Attributes
    ----------
    name
        Registry name.
    embed_dim
        Output dimension ``D``.
    input_size
        Side in pixels the model sees (tiles of another size are resized).
    mean, std
        Per-channel normalisation applied to ``[0, 1]`` pixels.
    mpp
        Native µm/px the model was trained at (``None`` = any).
    precision
        Autocast dtype on GPU: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    pooling
        How tokens become one vector (``"avg"``, ``"cls"``, ``"cls+mean"``, ``"none"``).
    extra
        Anything else to record; ``{"test_encoder": True}`` marks encoders made for tests
        (``test_tiny``, ``mean_rgb``), whose features ``wsimm train`` warns about.
    """

    name: str
    embed_dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mpp: float | None = None
    precision: str = "fp32"
    pooling: str = "avg"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Encoder(Protocol):
    """A created encoder."""

    cfg: EncoderCfg
    weights_fingerprint: str | None

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` uint8 -> ``(B, D)`` float32."""
        ...


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering a factory ``fn(*, weights=None, device="auto") -> Encoder``."""

    def deco(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        if name in _REGISTRY:
            raise ConfigError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


#: name prefix -> factory ``fn(name, *, weights, device)`` for families of encoders named by
#: prefix (``timm:<model>``, registered by wsimm.encoders._torch), so this module imports no
#: backend
_PREFIXES: dict[str, Callable[..., Encoder]] = {}


def register_prefix(prefix: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering a factory for every encoder name that starts with ``prefix``."""

    def deco(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _PREFIXES[prefix] = fn
        return fn

    return deco


def list_encoders() -> list[str]:
    """Registered encoder names (sorted)."""
    return sorted(_REGISTRY)


def create_encoder(name: str, *, weights: str | None = None, device: str = "auto") -> Encoder:
    """Create an encoder by registry name, or ``timm:<model>`` for any timm model; unknown
    names list the close matches."""
    if name not in _REGISTRY:
        for prefix, factory in _PREFIXES.items():
            if name.startswith(prefix):
                return factory(name, weights=weights, device=device)
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown encoder {name!r}{hint} (wsimm encoders lists them: "
            f"{', '.join(list_encoders())})"
        )
    return _REGISTRY[name](weights=weights, device=device)


# ---------------------------------------------------------------------------------------
# numpy built-ins
class _MeanRGB:
    """Mean colour of each tile (D=3): costs nothing, for I/O benchmarks and coords runs."""

    def __init__(self) -> None:
        self.cfg = EncoderCfg(name="mean_rgb", embed_dim=3, input_size=0, pooling="avg",
                              extra={"test_encoder": True})  # fmt: skip
        self.weights_fingerprint = None

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        try:  # OpenCV's SIMD mean: ~40x faster than numpy's strided reduction
            import cv2

            out = np.array([cv2.mean(t)[:3] for t in tiles], np.float32)
        except ImportError:
            out = tiles.reshape(len(tiles), -1, 3).mean(axis=1, dtype=np.float32)
        return (out / 255.0).astype(np.float32)


class _TestTiny:
    """A fixed random projection of 8x8-pooled, normalised pixels (D=16), deterministic."""

    def __init__(self, dim: int = 16) -> None:
        self.cfg = EncoderCfg(name="test_tiny", embed_dim=dim, input_size=0, pooling="avg",
                              extra={"test_encoder": True})  # fmt: skip
        rng = np.random.default_rng(1234)
        self.proj = (rng.standard_normal((8 * 8 * 3, dim)) / np.sqrt(8 * 8 * 3)).astype(np.float32)
        self.weights_fingerprint = hashlib.sha1(self.proj.tobytes()).hexdigest()[:16]

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        b, h, w, _ = tiles.shape
        if h % 8 or w % 8:
            raise ConfigError(f"test_tiny needs tiles divisible by 8, got {h}x{w}")
        x = tiles.reshape(b, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4), dtype=np.float32)
        mean = np.asarray(self.cfg.mean, np.float32) * 255
        std = np.asarray(self.cfg.std, np.float32) * 255
        x = (x - mean) / std
        return x.reshape(b, -1) @ self.proj


@register_encoder("mean_rgb")
def _mean_rgb(*, weights: str | None = None, device: str = "auto") -> Encoder:
    if weights:
        raise ConfigError("encoder mean_rgb takes no --weights")
    return _MeanRGB()


@register_encoder("test_tiny")
def _test_tiny(*, weights: str | None = None, device: str = "auto") -> Encoder:
    if weights:
        raise ConfigError("encoder test_tiny takes no --weights")
    return _TestTiny()
