"""Macenko stain normalisation, fitted once per slide.

Per-tile fits (what most tools do) are noisy: a tile of mostly stroma has no reliable
haematoxylin direction. wsimm fits the stain matrix and the 99th-percentile concentrations
on the slide's tissue pixels at thumbnail scale (while planning), then maps every tile of
that slide onto the reference stains with the same matrix.

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsimm.errors import ConfigError

__all__ = ["REFERENCE", "StainModel", "fit_macenko", "normalize_stains"]


@dataclass(frozen=True)
class StainModel:
    """Stain vectors (columns: haematoxylin, eosin) in optical density, and the 99th
    percentile concentration of each stain."""

    he: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    max_c: tuple[float, float]

    def to_dict(self) -> dict[str, list]:
        return {"he": [list(r) for r in self.he], "max_c": list(self.max_c)}

    @classmethod
    def from_dict(cls, d: dict) -> StainModel:
        return cls(he=tuple(tuple(r) for r in d["he"]), max_c=tuple(d["max_c"]))  # type: ignore[arg-type]


# the H&E reference most Macenko implementations share
REFERENCE = StainModel(
    he=((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)), max_c=(1.9705, 1.0308)
)


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)


def fit_macenko(
    rgb: np.ndarray, mask: np.ndarray | None = None, *, beta: float = 0.15, alpha: float = 1.0
) -> StainModel:
    """Fit the stain matrix on ``rgb`` pixels (``(H, W, 3)`` uint8), tissue only when a mask
    is given. Raises :class:`ConfigError` when there are too few stained pixels."""
    px = rgb[mask] if mask is not None else rgb.reshape(-1, 3)
    od = _od(px)
    od = od[(od > beta).all(axis=1)]
    if len(od) < 100:
        raise ConfigError(
            f"stain normalisation needs stained tissue; found {len(od)} stained pixels "
            "(is this an H&E slide? drop --stain-norm)"
        )
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = (v1 if v1[0] > 0 else -v1), (v2 if v2[0] > 0 else -v2)
    he = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    he /= np.linalg.norm(he, axis=0, keepdims=True)
    c = np.linalg.lstsq(he, od.T, rcond=None)[0]
    max_c = np.percentile(c, 99, axis=1)
    return StainModel(he=tuple(tuple(map(float, r)) for r in he),  # type: ignore[arg-type]
                      max_c=(float(max_c[0]), float(max_c[1])))  # fmt: skip


def normalize_stains(
    tiles: np.ndarray, source: StainModel, target: StainModel = REFERENCE
) -> np.ndarray:
    """Map ``(..., H, W, 3)`` uint8 tiles stained like ``source`` onto ``target``'s stains."""
    he_s = np.asarray(source.he, np.float32)
    he_t = np.asarray(target.he, np.float32)
    scale = np.asarray(target.max_c, np.float32) / np.maximum(
        np.asarray(source.max_c, np.float32), 1e-6
    )
    pinv = np.linalg.pinv(he_s).astype(np.float32)  # (2, 3)
    m = he_t @ (scale[:, None] * pinv)  # od_target = m @ od_source, one 3x3 matrix
    shape = tiles.shape
    od = _od(tiles)
    out = 256.0 * np.exp(-(od @ m.T)) - 1.0
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(shape)
