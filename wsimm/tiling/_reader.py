"""A fast region reader for tiled TIFF pyramids (SVS, generic tiled TIFF, OME-TIFF levels).

``Slide.read_region`` decodes every TIFF tile a region touches, every time. A tile grid
whose tiles straddle TIFF tile borders therefore decodes most TIFF tiles two to four times.
:class:`TiffTileReader` decodes each TIFF tile once per run of nearby reads: it keeps the
decoded tiles of the TIFF tile rows that later reads (in row-major order) can still touch,
and drops rows the reads have moved past, so memory stays at a few rows of TIFF tiles.

Pixels are decoded by tifffile's own decoder for the page (imagecodecs underneath), exactly
as tiffslide decodes them, so the output equals ``Slide.read_region`` bit for bit (a test
checks this). Files the reader does not handle (stripped or non-RGB pages, pages that do not
match the slide's levels, non-TIFF formats) get ``None`` from :func:`open_tile_reader` and
the caller falls back to ``Slide.read_region``.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

__all__ = ["TiffTileReader", "open_tile_reader"]


class TiffTileReader:
    """Read RGB regions of one tiled TIFF page with a row-evicting decoded-tile cache.

    Not thread-safe: use one reader per thread (the pipeline makes one per chunk task).
    """

    def __init__(self, path: str, page: Any, level_downsample: float) -> None:
        self.path = path
        self.downsample = float(level_downsample)
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.tiles_across = math.ceil(self.width / self.tile_w)
        self._offsets = tuple(int(v) for v in page.dataoffsets)
        self._counts = tuple(int(v) for v in page.databytecounts)
        self._decode = page.decode
        self._jpegtables = page.jpegtables
        self._samples = int(page.samplesperpixel)
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: dict[tuple[int, int], np.ndarray | None] = {}
        self._buf: np.ndarray | None = None
        self._low_row = 1 << 62  # lowest TIFF tile row in the cache
        self.decoded = 0  # TIFF tiles decoded so far (for benchmarks and tests)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()
        self._low_row = 1 << 62

    def __enter__(self) -> TiffTileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    def _tile(self, ty: int, tx: int) -> np.ndarray | None:
        key = (ty, tx)
        arr = self._cache.get(key)
        if arr is None and key not in self._cache:
            i = ty * self.tiles_across + tx
            n = self._counts[i]
            if n == 0:  # an empty (sparse) tile: background
                arr = None
            else:
                data = os.pread(self._fd, n, self._offsets[i])
                try:
                    seg, _, _ = self._decode(data, i, jpegtables=self._jpegtables)
                    arr = np.asarray(seg).reshape(seg.shape[-3:])[..., :3]
                except Exception as e:
                    from wsimm.errors import SlideReadError

                    raise SlideReadError(
                        f"{self.path}: TIFF tile {i} (row {ty}, column {tx}) cannot be decoded "
                        f"({type(e).__name__}: {e}); the file is damaged or truncated: re-copy it"
                    ) from e
                self.decoded += 1
            self._cache[key] = arr
            self._low_row = min(self._low_row, ty)
        return arr

    def _evict(self, row: int) -> None:
        """Drop decoded tiles of TIFF tile rows above ``row`` (a scan of the cache only when
        the reads have moved past its lowest row, not on every read)."""
        if row > self._low_row:
            for k in [k for k in self._cache if k[0] < row]:
                del self._cache[k]
            self._low_row = min((k[0] for k in self._cache), default=1 << 62)

    def read_level(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 pixels of this level starting at level pixel ``(x, y)``;
        pixels outside the image are white. Reads should come in (roughly) row-major order:
        tile rows above the current read are dropped from the cache.

        The returned array belongs to the reader (its buffer or a cached tile) and may be
        overwritten by the next read: copy it to keep it."""
        if (
            x % self.tile_w == 0
            and y % self.tile_h == 0
            and (w, h) == (self.tile_w, self.tile_h)
            and x + w <= self.width
            and y + h <= self.height
        ):
            # exactly one TIFF tile (a grid aligned with the file's tiling): no assembling
            tile = self._tile(y // self.tile_h, x // self.tile_w)
            if tile is not None:
                self._evict(y // self.tile_h)
                return tile
        # one reused buffer: a fresh 0.8 MB array per read costs more in page faults than
        # the copy itself
        if self._buf is None or self._buf.shape != (h, w, 3):
            self._buf = np.empty((h, w, 3), np.uint8)
        out = self._buf
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            out.fill(255)
            return out
        if x0 > x or y0 > y or x1 < x + w or y1 < y + h:
            out.fill(255)  # partly outside the image: white margin
        ty0, ty1 = y0 // self.tile_h, (y1 - 1) // self.tile_h
        tx0, tx1 = x0 // self.tile_w, (x1 - 1) // self.tile_w
        self._evict(ty0)
        for ty in range(ty0, ty1 + 1):
            sy0 = max(y0, ty * self.tile_h)
            sy1 = min(y1, (ty + 1) * self.tile_h)
            for tx in range(tx0, tx1 + 1):
                sx0 = max(x0, tx * self.tile_w)
                sx1 = min(x1, (tx + 1) * self.tile_w)
                tile = self._tile(ty, tx)
                if tile is None:  # sparse tile: background
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = 255
                    continue
                oy, ox = ty * self.tile_h, tx * self.tile_w
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                    sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox
                ]
        return out

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """The ``Slide.read_region`` signature (level-0 ``location``); ``level`` is ignored:
        a reader serves the one level it was opened for."""
        lx = math.floor(int(location[0]) / self.downsample)
        ly = math.floor(int(location[1]) / self.downsample)
        return self.read_level(lx, ly, int(size[0]), int(size[1]))


_PAGES: dict[tuple[str, int, float], Any] = {}
_PAGES_LOCK = threading.Lock()


def _find_page(path: str, level: int, dims: tuple[int, int]) -> Any:
    """The tifffile page of ``level`` if it is a tiled 8-bit RGB(A) page of the right size."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        if tf.is_ndpi or not tf.series:
            return None
        levels = tf.series[0].levels
        if level >= len(levels):
            return None
        lv = levels[level]
        pages = getattr(lv, "pages", None) or [lv.keyframe]
        if len(pages) != 1:
            return None
        page = pages[0]
        page = page.keyframe if hasattr(page, "keyframe") and page.keyframe is not None else page
        ok = (
            page.is_tiled
            and page.tiledepth == 1
            and page.planarconfig == 1
            and page.samplesperpixel in (3, 4)
            and page.dtype == np.uint8
            and (int(page.imagewidth), int(page.imagelength)) == tuple(dims)
            and page.photometric in (2, 6)  # RGB, YCbCr (decoded to RGB)
        )
        if not ok:
            return None
        # touch what the reader needs while the file is open
        _ = page.dataoffsets, page.databytecounts, page.decode, page.jpegtables
        return page


def open_tile_reader(slide: Any, level: int) -> TiffTileReader | None:
    """A :class:`TiffTileReader` for ``slide``'s ``level``, or ``None`` when the file is not
    a tiled TIFF page that the reader handles (the caller then uses ``slide.read_region``)."""
    path = os.fspath(slide.path)
    if not os.path.isfile(path):
        return None
    try:
        st = os.stat(path)
        key = (path, level, st.st_mtime)
        with _PAGES_LOCK:
            page = _PAGES.get(key, False)
        if page is False:
            page = _find_page(path, level, tuple(slide.level_dimensions[level]))
            with _PAGES_LOCK:
                _PAGES[key] = page
        if page is None:
            return None
        return TiffTileReader(path, page, slide.level_downsamples[level])
    except Exception:  # anything odd: the slide's own reader is always right
        return None
