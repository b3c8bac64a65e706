"""Tile grids in physical units: pure numpy geometry, no I/O.

A tile of ``tile_px`` pixels at ``mpp`` µm/px covers ``tile_px * mpp / slide_mpp`` level-0
pixels (``size0``, usually not an integer: 256 px at 0.5 µm/px on a 0.499 µm/px slide is
256.51 level-0 px). Tiles are placed every ``stride0 = size0 * (1 - overlap)`` level-0 px; their
top-left corners are rounded to integer level-0 coordinates. Each tile is read from the
coarsest pyramid level that is still at least as fine as the target, over the exact
fractional extent, and resized to ``tile_px`` (see :func:`read_tile`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wsimm.errors import ConfigError

__all__ = [
    "TileGrid",
    "TileSpec",
    "best_level",
    "grid_from_store",
    "plan_grid",
    "read_tile",
    "read_tiles",
    "tissue_fractions",
]


@dataclass(frozen=True)
class TileSpec:
    """What tiles to cut.

    Attributes
    ----------
    mpp
        Target resolution, µm/px (exact).
    tile_px
        Tile side in pixels at the target resolution.
    overlap
        Fraction of a tile shared with its neighbour, ``0 <= overlap < 1``.
    min_tissue
        Minimum fraction of a tile covered by the tissue mask.
    edge_tiles
        Also place the tiles that run past the slide's right and bottom edges (their outside
        part is white padding, as CLAM pads), so tissue at the border is tiled; the tissue
        fraction counts the padding as background.
    """

    mpp: float = 0.5
    tile_px: int = 256
    overlap: float = 0.0
    min_tissue: float = 0.25
    edge_tiles: bool = False

    def __post_init__(self) -> None:
        if not (0.01 <= self.mpp <= 100):
            raise ConfigError(f"target --mpp {self.mpp} is not a plausible µm/px (0.01-100)")
        if not (8 <= self.tile_px <= 8192):
            raise ConfigError(f"--tile-px {self.tile_px} must be between 8 and 8192")
        if not (0 <= self.overlap < 1):
            raise ConfigError(f"--overlap {self.overlap} must be in [0, 1)")
        if not (0 <= self.min_tissue <= 1):
            raise ConfigError(f"--min-tissue {self.min_tissue} must be in [0, 1]")

    @property
    def stride_px(self) -> int:
        """Stride in target pixels."""
        return max(1, round(self.tile_px * (1 - self.overlap)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.edge_tiles:  # stores tiled before the option compare equal
            d.pop("edge_tiles")
        return d


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one slide.

    Attributes
    ----------
    coords
        ``(N, 2)`` int64 level-0 top-left ``x, y``, row-major order.
    tissue_fraction
        ``(N,)`` float32 fraction of each tile covered by tissue.
    size0, stride0
        Tile side and stride in level-0 pixels (floats).
    level, level_downsample
        The pyramid level tiles are read from and its downsample.
    slide_mpp, spec
        The slide's level-0 µm/px and the requested :class:`TileSpec`.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    size0: float
    stride0: float
    level: int
    level_downsample: float
    slide_mpp: float
    spec: TileSpec

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def read_size(self) -> int:
        """Pixels to read at :attr:`level` per tile (covers the fractional extent)."""
        return math.ceil(self.size0 / self.level_downsample - 1e-9)

    @property
    def upsampling(self) -> bool:
        return self.size0 / self.level_downsample < self.spec.tile_px - 1e-6


def best_level(level_downsamples: tuple[float, ...], want: float) -> int:
    """The pyramid level the tiler reads for a wanted downsample: the coarsest level that does
    not exceed it (0.1% tolerance for scanners' rounding), so tiles are never upsampled."""
    best = 0
    for i, d in enumerate(level_downsamples):
        if d <= want * 1.001:
            best = i
    return best


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a mask with a zero first row and column, ``(h + 1, w + 1)``:
    OpenCV's integral image (exact integer counts) for boolean masks under 2**31 pixels, a
    float64 cumulative sum otherwise."""
    cv2 = _cv2()
    if cv2 is not None and mask.dtype == np.bool_ and 0 < mask.size < 2**31:
        return cv2.integral(np.ascontiguousarray(mask).view(np.uint8), sdepth=cv2.CV_32S)
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    sat[1:, 1:] = np.asarray(mask, dtype=np.float64).cumsum(0).cumsum(1)
    return sat


def _area_to(sat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask area above-left of each point ``(x, y)``, from the summed-area table ``sat``
    (bilinear between its samples: exact for a piecewise-constant mask)."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    x = np.clip(x, 0, w)
    y = np.clip(y, 0, h)
    xi = np.floor(x).astype(np.int64).clip(0, w - 1)
    yi = np.floor(y).astype(np.int64).clip(0, h - 1)
    fx, fy = x - xi, y - yi
    a = sat[yi, xi]
    b = sat[yi, xi + 1]
    c = sat[yi + 1, xi]
    d = sat[yi + 1, xi + 1]
    return a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy


def tissue_fractions(
    mask: np.ndarray,
    mask_downsample: float,
    coords: np.ndarray,
    size0: float,
    *,
    band_rows: int = 512,
) -> np.ndarray:
    """Exact fraction of each ``size0`` square at ``coords`` covered by ``mask``.

    Uses a summed-area table interpolated bilinearly, which integrates the piecewise-constant
    mask exactly over fractional boxes. The table is built for one band of ``band_rows`` mask
    rows at a time (plus the height of a tile), for the tiles whose top edge falls in that
    band: a whole-mask table of a 4096-px thumbnail would take 50 MB. A band's table differs
    from the whole one by a row of column sums, which cancels in each box's four corners.
    """
    m = np.asarray(mask)
    h = m.shape[0]
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0, y0 = c[:, 0] / mask_downsample, c[:, 1] / mask_downsample
    s = size0 / mask_downsample
    x1, y1 = x0 + s, y0 + s
    out = np.zeros(len(c), np.float32)
    if not len(c) or not m.size or s <= 0:
        return out
    band = np.clip(np.floor(y0), 0, h - 1).astype(np.int64) // band_rows
    for k in np.unique(band):
        sel = np.flatnonzero(band == k)
        r0 = int(k) * band_rows
        r1 = min(h, r0 + band_rows + math.ceil(s) + 2)
        sat = _integral(m[r0:r1])
        bx0, bx1 = x0[sel], x1[sel]
        by0, by1 = y0[sel] - r0, y1[sel] - r0
        total = (
            _area_to(sat, bx1, by1) - _area_to(sat, bx0, by1)
            - _area_to(sat, bx1, by0) + _area_to(sat, bx0, by0)
        )  # fmt: skip
        out[sel] = np.clip(total / (s * s), 0.0, 1.0)
    return out


def plan_grid(
    dimensions: tuple[int, int],
    level_downsamples: tuple[float, ...],
    slide_mpp: float,
    spec: TileSpec,
    *,
    mask: np.ndarray | None = None,
    mask_downsample: float = 1.0,
) -> TileGrid:
    """Place tiles over a slide and keep those with enough tissue.

    Only tiles entirely inside the slide are placed, unless ``spec.edge_tiles`` (then the
    last column and row may run past the edge). Without a mask every tile is kept with
    tissue fraction 1.
    """
    if slide_mpp <= 0 or not math.isfinite(slide_mpp):
        raise ConfigError(f"slide µm/px must be positive, got {slide_mpp}")
    w0, h0 = dimensions
    size0 = spec.tile_px * spec.mpp / slide_mpp
    stride0 = spec.stride_px * spec.mpp / slide_mpp
    level = best_level(tuple(level_downsamples), spec.mpp / slide_mpp)
    if spec.edge_tiles:  # every start left of the edge until a tile reaches past it
        nx = max(1, math.ceil((w0 - size0) / stride0 - 1e-9) + 1) if w0 > 0 else 0
        ny = max(1, math.ceil((h0 - size0) / stride0 - 1e-9) + 1) if h0 > 0 else 0
    else:
        nx = max(0, math.floor((w0 - size0) / stride0 + 1 + 1e-9)) if w0 >= size0 else 0
        ny = max(0, math.floor((h0 - size0) / stride0 + 1 + 1e-9)) if h0 >= size0 else 0
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    coords = np.stack(
        [np.round(gx.ravel() * stride0), np.round(gy.ravel() * stride0)], axis=1
    ).astype(np.int64)
    if mask is None:
        frac = np.ones(len(coords), np.float32)
    else:
        frac = tissue_fractions(mask, mask_downsample, coords, size0)
        keep = frac >= spec.min_tissue - 1e-6 if spec.min_tissue > 0 else np.ones(len(frac), bool)
        coords, frac = coords[keep], frac[keep]
    return TileGrid(
        coords=coords,
        tissue_fraction=frac,
        size0=size0,
        stride0=stride0,
        level=level,
        level_downsample=float(level_downsamples[level]),
        slide_mpp=slide_mpp,
        spec=spec,
    )


def read_tile(
    slide: Any,
    grid: TileGrid,
    xy: tuple[int, int],
    *,
    reader: Any = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Read one tile at exactly ``grid.spec.mpp``: ``(tile_px, tile_px, 3)`` uint8.

    Reads ``grid.read_size`` pixels at ``grid.level`` and resamples the exact fractional
    extent ``size0 / level_downsample`` to ``tile_px`` (area filter when shrinking, bilinear
    when enlarging). When the extent is already ``tile_px`` no resampling happens.
    ``reader`` (a :class:`~wsimm.tiling.TiffTileReader` for ``grid.level``) replaces
    ``slide.read_region`` with a reader that decodes each TIFF tile once. ``out`` (a
    C-contiguous ``(tile_px, tile_px, 3)`` uint8 array, e.g. a row of a batch) receives the
    tile and is returned, so a batch is filled without a fresh array per tile.
    """
    from PIL import Image

    t = grid.spec.tile_px
    n = grid.read_size
    src = reader if reader is not None else slide
    extent = grid.size0 / grid.level_downsample
    aligned = n == t and abs(extent - t) < 1e-6
    if aligned and out is not None and reader is not None and reader.read_into(xy, out):
        return out  # decoded in place
    region = src.read_region((int(xy[0]), int(xy[1])), grid.level, (n, n))
    if aligned:
        if out is not None:
            np.copyto(out, region)
            return out
        return region if reader is None else region.copy()  # a reader reuses its buffer
    k = extent / t
    if n == round(extent) and abs(k - round(k)) < 1e-9 and _cv2() is not None:
        # integer factor: the exact mean of k x k blocks, rounded (a test checks), in
        # OpenCV's SIMD kernel: several times faster than PIL, whose fixed-point BOX filter
        # is off by up to 1
        cv2 = _cv2()
        if out is not None:
            r = cv2.resize(region, (t, t), dst=out, interpolation=cv2.INTER_AREA)
            if not np.shares_memory(r, out):  # OpenCV allocated instead (non-contiguous out)
                np.copyto(out, r)
            return out
        return cv2.resize(region, (t, t), interpolation=cv2.INTER_AREA)
    img = Image.fromarray(region)
    resample = Image.Resampling.BILINEAR if extent < t else Image.Resampling.BOX
    tile = np.asarray(img.resize((t, t), resample, box=(0.0, 0.0, extent, extent)))
    if out is not None:
        np.copyto(out, tile)
        return out
    return tile


def read_tiles(
    slide: Any, grid: TileGrid, coords: np.ndarray | None = None, batch_size: int = 64
) -> Iterator[np.ndarray]:
    """Yield ``(B, tile_px, tile_px, 3)`` uint8 batches of the tiles at ``coords`` (default:
    every tile of the grid), each a fresh array, through one TIFF tile reader when the slide
    has one."""
    from wsimm.tiling._reader import open_tile_reader

    coords = grid.coords if coords is None else coords
    t = grid.spec.tile_px
    reader = open_tile_reader(slide, grid.level)
    if reader is not None and len(coords):  # the reads to come, in order
        reader.expect(coords, grid.read_size, grid.read_size)
    try:
        for b0 in range(0, len(coords), batch_size):
            part = coords[b0 : b0 + batch_size]
            batch = np.empty((len(part), t, t, 3), np.uint8)
            for i, xy in enumerate(part):
                read_tile(slide, grid, (int(xy[0]), int(xy[1])), reader=reader, out=batch[i])
            yield batch
    finally:
        if reader is not None:
            reader.close()


def grid_from_store(fs: Any, slide_id: str) -> TileGrid:
    """The :class:`TileGrid` a complete slide of a feature store was tiled with (its
    coordinates, level, read size and spec), so its tiles can be read again exactly."""
    from wsimm.store import read_downsample

    a = fs.slide_attrs(slide_id)
    p = a.get("params", {})
    spec = TileSpec(
        mpp=float(a["target_mpp"]),
        tile_px=int(a["tile_px"]),
        overlap=float(p.get("overlap", 0.0)),
        min_tissue=float(a.get("min_tissue", 0.0)),
        edge_tiles=bool(p.get("edge_tiles", False)),
    )
    return TileGrid(
        coords=fs.coords(slide_id),
        tissue_fraction=fs.tissue_fraction(slide_id),
        size0=float(a["tile_size0"]),
        stride0=float(a["stride0"]),
        level=int(a["read_level"]),
        level_downsample=read_downsample(a),
        slide_mpp=float(a["mpp"]),
        spec=spec,
    )


@functools.cache
def _cv2() -> Any:
    """OpenCV if installed (``opencv-python-headless``), else ``None``."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)  # tiles are parallel already; no nested thread pools
    return cv2
