"""Rendering tile scores as images, region by region.

:class:`ScoreField` paints tile scores onto level-0 space and renders any rectangle at any
downsample on demand (overlapping tiles averaged, clipped to tissue), so every writer works in
chunks: memory grows with the number of tiles and the chunk, never with the slide's pixels.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsimm.errors import ConfigError

#: sequential scores' default colour map: perceptually uniform (equal steps in score look
#: like equal steps in colour, unlike rainbow maps such as turbo or jet) and colour-blind safe
DEFAULT_CMAP = "viridis"

__all__ = ["DEFAULT_CMAP", "ScoreField", "colorize", "smooth_scores", "write_overlay_tiff"]


def smooth_scores(
    coords: np.ndarray, stride0: float, values: np.ndarray, sigma: float
) -> np.ndarray:
    """Gaussian smoothing of tile scores over the tile grid (``sigma`` in tiles), normalised
    over the tiles that exist, so tissue edges are not pulled towards zero."""
    if sigma <= 0 or len(values) == 0:
        return np.asarray(values, np.float32)
    from scipy import ndimage

    g = np.round(np.asarray(coords, np.float64) / stride0).astype(np.int64)
    g -= g.min(0)
    shape = (int(g[:, 1].max()) + 1, int(g[:, 0].max()) + 1)
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape, np.float64)
    np.add.at(num, (g[:, 1], g[:, 0]), values)
    np.add.at(den, (g[:, 1], g[:, 0]), 1.0)
    num = ndimage.gaussian_filter(num, sigma, mode="constant")
    den = ndimage.gaussian_filter(den, sigma, mode="constant")
    return (num[g[:, 1], g[:, 0]] / np.maximum(den[g[:, 1], g[:, 0]], 1e-12)).astype(np.float32)


class ScoreField:
    """Tile scores as a function on level-0 space.

    A level-0 point takes the mean score of the tiles covering it (several with overlapping
    tiles), and ``NaN`` where no tile covers it or the tissue mask is empty.
    """

    def __init__(
        self,
        coords: np.ndarray,
        size0: float,
        values: np.ndarray,
        *,
        tissue: np.ndarray | None = None,
        tissue_downsample: float = 1.0,
    ) -> None:
        c = np.asarray(coords, np.float64).reshape(-1, 2)
        v = np.asarray(values, np.float64)
        if len(v) != len(c):
            raise ConfigError(f"{len(v)} scores for {len(c)} tiles")
        order = np.argsort(c[:, 1], kind="stable")  # by y: a region reads one band of tiles
        self.x, self.y, self.values = c[order, 0], c[order, 1], v[order]
        self.size0 = float(size0)
        self.tissue = tissue
        self.tissue_ds = float(tissue_downsample)

    def _band(self, x0: float, y0: float, w: int, h: int, dsx: float, dsy: float) -> np.ndarray:
        """Indices of the tiles that reach into the rectangle (the y-sorted band first)."""
        s = self.size0
        lo = int(np.searchsorted(self.y, y0 - s, side="right"))
        hi = int(np.searchsorted(self.y, y0 + h * dsy, side="left"))
        bx = self.x[lo:hi]
        return np.arange(lo, hi)[(bx < x0 + w * dsx) & (bx + s > x0) & (self.y[lo:hi] + s > y0)]

    def uniform(
        self, x0: float, y0: float, w: int, h: int, ds: float | tuple[float, float]
    ) -> float | None:
        """The value every pixel of :meth:`region` would take when the rectangle is uniform
        without rendering it: ``NaN`` where no tile reaches it, a tile's score where that one
        tile covers every pixel centre and the tissue mask holds them all; ``None`` otherwise
        (render it). A full-resolution overlay is mostly such rectangles."""
        dsx, dsy = (float(ds), float(ds)) if np.isscalar(ds) else (float(ds[0]), float(ds[1]))  # type: ignore[index]
        sel = self._band(x0, y0, w, h, dsx, dsy)
        if len(sel) == 0:
            return float("nan")
        if len(sel) > 1:
            return None
        (k,) = sel
        s = self.size0
        px0, px1 = x0 + 0.5 * dsx, x0 + (w - 0.5) * dsx  # first and last pixel centres
        py0, py1 = y0 + 0.5 * dsy, y0 + (h - 0.5) * dsy
        if not (
            self.x[k] <= px0 and px1 < self.x[k] + s and self.y[k] <= py0 and py1 < self.y[k] + s
        ):
            return None
        if self.tissue is not None:
            mh, mw = self.tissue.shape
            cx0, cx1 = int(px0 / self.tissue_ds), int(px1 / self.tissue_ds)
            cy0, cy1 = int(py0 / self.tissue_ds), int(py1 / self.tissue_ds)
            if cx1 >= mw or cy1 >= mh or not self.tissue[cy0 : cy1 + 1, cx0 : cx1 + 1].all():
                return None
        return float(np.float32(self.values[k]))

    def region(
        self, x0: float, y0: float, w: int, h: int, ds: float | tuple[float, float]
    ) -> np.ndarray:
        """``(h, w)`` float32 scores of the output pixels whose centres are
        ``x0 + (j + 0.5) * dsx, y0 + (i + 0.5) * dsy`` in level-0 pixels (``ds`` is one
        downsample or ``(dsx, dsy)``)."""
        dsx, dsy = (float(ds), float(ds)) if np.isscalar(ds) else (float(ds[0]), float(ds[1]))  # type: ignore[index]
        s = self.size0
        sel = self._band(x0, y0, w, h, dsx, dsy)
        num = np.zeros((h, w), np.float64)
        cnt = np.zeros((h, w), np.float32)
        if len(sel):
            # pixel j is covered by a tile when tx <= x0 + (j + .5) ds < tx + s
            jx0 = np.ceil((self.x[sel] - x0) / dsx - 0.5).astype(np.int64)
            jx1 = np.ceil((self.x[sel] + s - x0) / dsx - 0.5).astype(np.int64)
            iy0 = np.ceil((self.y[sel] - y0) / dsy - 0.5).astype(np.int64)
            iy1 = np.ceil((self.y[sel] + s - y0) / dsy - 0.5).astype(np.int64)
            # a tile smaller than a pixel lands on the pixel under its centre
            tiny_x, tiny_y = jx1 <= jx0, iy1 <= iy0
            jx0 = np.where(tiny_x, np.floor((self.x[sel] + s / 2 - x0) / dsx), jx0).astype(np.int64)
            jx1 = np.where(tiny_x, jx0 + 1, jx1)
            iy0 = np.where(tiny_y, np.floor((self.y[sel] + s / 2 - y0) / dsy), iy0).astype(np.int64)
            iy1 = np.where(tiny_y, iy0 + 1, iy1)
            jx0, jx1 = np.clip(jx0, 0, w), np.clip(jx1, 0, w)
            iy0, iy1 = np.clip(iy0, 0, h), np.clip(iy1, 0, h)
            vals = self.values[sel]
            if np.all(tiny_x & tiny_y):  # low resolution: one pixel per tile, vectorised
                ok = (jx0 < w) & (iy0 < h) & (jx1 > jx0) & (iy1 > iy0)
                np.add.at(num, (iy0[ok], jx0[ok]), vals[ok])
                np.add.at(cnt, (iy0[ok], jx0[ok]), 1.0)
            else:
                for k in range(len(sel)):
                    if jx1[k] > jx0[k] and iy1[k] > iy0[k]:
                        num[iy0[k] : iy1[k], jx0[k] : jx1[k]] += vals[k]
                        cnt[iy0[k] : iy1[k], jx0[k] : jx1[k]] += 1.0
        out = np.full((h, w), np.nan, np.float32)
        has = cnt > 0
        out[has] = (num[has] / cnt[has]).astype(np.float32)
        if self.tissue is not None and has.any():
            mh, mw = self.tissue.shape
            cx = ((x0 + (np.arange(w) + 0.5) * dsx) / self.tissue_ds).astype(np.int64)
            cy = ((y0 + (np.arange(h) + 0.5) * dsy) / self.tissue_ds).astype(np.int64)
            inside = self.tissue[np.clip(cy, 0, mh - 1)][:, np.clip(cx, 0, mw - 1)]
            inside &= (cy[:, None] < mh) & (cx[None, :] < mw)
            out[~inside] = np.nan
        return out


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ConfigError(
            f"unknown colour map {cmap!r} (try viridis, magma, cividis, RdBu_r)"
        ) from None
    return (cm(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize(
    values: np.ndarray,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 1.0,
) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA: the colour map over ``[vmin, vmax]``, transparent at NaN."""
    v = np.asarray(values, np.float32)
    span = vmax - vmin if vmax > vmin else 1.0
    idx = np.clip(np.nan_to_num((v - vmin) / span * 255.0, nan=0.0), 0, 255).astype(np.uint16)
    idx[~np.isfinite(v)] += 256  # the transparent half of the table
    return _rgba_table(cmap, round(255 * alpha))[idx].view(np.uint8).reshape(*v.shape, 4)


@functools.lru_cache(maxsize=32)
def _rgba_table(cmap: str, alpha: int) -> np.ndarray:
    """512 RGBA entries as uint32 (one gather per pixel): the map at ``alpha``, then the same
    colours fully transparent."""
    t = np.zeros((512, 4), np.uint8)
    t[:256, :3] = t[256:, :3] = _lut(cmap)
    t[:256, 3] = alpha
    return t.view(np.uint32).ravel()


def _level_tiles(
    field: ScoreField, ds: tuple[float, float], w: int, h: int, tile: int, colour: dict[str, Any]
) -> Iterator[bytes]:
    """The level's tiles, zlib-compressed as the TIFF stores them; a uniform tile (most of a
    full-resolution overlay) is neither rendered nor compressed again for a value seen before."""
    seen: dict[bytes, bytes] = {}
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            x0, y0 = tx * ds[0], ty * ds[1]
            u = field.uniform(x0, y0, tile, tile, ds)
            if u is None:
                yield zlib.compress(colorize(field.region(x0, y0, tile, tile, ds), **colour), 6)
                continue
            key = np.float32(u).tobytes()
            if key not in seen:
                seen[key] = zlib.compress(colorize(np.full((tile, tile), u), **colour), 6)
            yield seen[key]


def write_overlay_tiff(
    field: ScoreField,
    path: str | os.PathLike[str],
    *,
    dims: tuple[int, int],
    mpp: float,
    downsample: float,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 1.0,
    tile: int = 256,
    description: str = "",
) -> list[tuple[int, int]]:
    """A tiled pyramidal RGBA TIFF of the heatmap over the slide's full extent.

    Level 0 of the TIFF is the slide at about ``downsample``: ``ceil(w0 / downsample)`` x
    ``ceil(h0 / downsample)`` pixels that span the slide's extent exactly (each axis has its
    own scale, ``w0 / w`` and ``h0 / h``, written in the resolution tags), so a viewer that
    stretches an overlay over the slide (QuPath) lines it up to the level-0 pixel; further
    levels shrink by 4 until one tile holds the image; NaN (no tissue score) is transparent.
    Classic TIFF (QuPath's file check cannot parse BigTIFF headers) unless the compressed
    file outgrows its 4 GiB offsets, then BigTIFF. Every output tile is rendered on its own;
    uniform ones (most, at full resolution) are neither rendered nor compressed twice. Written
    to a temporary name and renamed, so a failure leaves no partial file. Returns the level
    sizes ``(w, h)``.
    """
    import tifffile

    w0, h0 = dims
    levels: list[float] = [float(downsample)]
    while max(w0, h0) / levels[-1] > tile:  # down to one tile
        levels.append(levels[-1] * 4)
    colour = {"vmin": vmin, "vmax": vmax, "cmap": cmap, "alpha": alpha}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shapes = [(math.ceil(w0 / ds), math.ceil(h0 / ds)) for ds in levels]
    try:
        try:
            _write_levels(tifffile, tmp, False, field, shapes, dims, mpp, tile, colour, description)
        except ValueError as e:
            if "too large" not in str(e):
                raise
            _write_levels(tifffile, tmp, True, field, shapes, dims, mpp, tile, colour, description)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return shapes


def _write_levels(
    tifffile: Any,
    tmp: Path,
    big: bool,
    field: ScoreField,
    shapes: list[tuple[int, int]],
    dims: tuple[int, int],
    mpp: float,
    tile: int,
    colour: dict[str, Any],
    description: str,
) -> None:
    """One pass of :func:`write_overlay_tiff`: every level into ``tmp``, BigTIFF or not."""
    w0, h0 = dims
    with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
        for i, (lw, lh) in enumerate(shapes):
            sx, sy = w0 / lw, h0 / lh  # level-0 px per pixel: the slide's extent exactly
            tw.write(
                _level_tiles(field, (sx, sy), lw, lh, tile, colour),
                shape=(lh, lw, 4),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                extrasamples=("unassalpha",),
                compression="zlib",
                resolution=(1e4 / (mpp * sx), 1e4 / (mpp * sy)),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
            )
