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
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TiffTileReader", "open_tile_reader"]


class TiffTileReader:
    """Read RGB regions of one tiled TIFF page through a decoded-tile cache: row-evicting,
    or, once the reads to come are declared (:meth:`expect`), keeping each tile exactly
    until its last read.

    Not thread-safe: use one reader per thread (the pipeline makes one per chunk task).
    """

    def __init__(self, path: str, page: Any, level_downsample: float) -> None:
        layout = page if isinstance(page, _Layout) else _Layout.of(page)
        self.path = path
        self.downsample = float(level_downsample)
        self.height, self.width = layout.height, layout.width
        self.tile_h, self.tile_w = layout.tile_h, layout.tile_w
        self.tiles_across = math.ceil(self.width / self.tile_w)
        self._offsets = layout.offsets
        self._counts = layout.counts
        self._decode = layout.decode
        self._jpegtables = layout.jpegtables
        self._jpeg = layout.jpeg
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: dict[tuple[int, int], np.ndarray | None] = {}
        self._buf: np.ndarray | None = None
        self._low_row = 1 << 62  # lowest TIFF tile row in the cache
        self._uses: dict[tuple[int, int], int] | None = None  # reads left per tile (expect)
        self.decoded = 0  # TIFF tiles decoded so far (for benchmarks and tests)

    def _level_xy(self, location: tuple[int, int]) -> tuple[int, int]:
        """Level-0 ``location`` -> this level's pixel (how every read maps it)."""
        return (
            math.floor(int(location[0]) / self.downsample),
            math.floor(int(location[1]) / self.downsample),
        )

    def expect(self, locations: np.ndarray, w: int, h: int) -> None:
        """Declare the reads to come: ``(w, h)`` regions (this level's pixels) at the
        level-0 ``locations`` (``(N, 2)``), in order, as :meth:`read_region` will get them.

        From then on the cache keeps a decoded tile exactly until the last declared read
        that touches it, instead of whole rows of TIFF tiles: a grid aligned with the file's
        tiling keeps nothing, one that straddles TIFF tiles keeps only the tiles a later
        tile shares. Memory stays small and the decoder writes into buffers that are still
        in the CPU cache. Reads that were not declared are served too (their tiles are
        dropped after use).
        """
        c = np.asarray(locations, np.float64).reshape(-1, 2)
        # vectorised _level_xy: the same float division and floor
        x = np.floor(c[:, 0] / self.downsample).astype(np.int64)
        y = np.floor(c[:, 1] / self.downsample).astype(np.int64)
        x0, y0 = np.maximum(x, 0), np.maximum(y, 0)
        x1, y1 = np.minimum(x + w, self.width), np.minimum(y + h, self.height)
        inside = (x1 > x0) & (y1 > y0)
        x0, y0, x1, y1 = x0[inside], y0[inside], x1[inside], y1[inside]
        tx0, tx1 = x0 // self.tile_w, (x1 - 1) // self.tile_w
        ty0, ty1 = y0 // self.tile_h, (y1 - 1) // self.tile_h
        keys = []
        for dy in range(int((ty1 - ty0).max(initial=-1)) + 1):
            for dx in range(int((tx1 - tx0).max(initial=-1)) + 1):
                hit = (ty0 + dy <= ty1) & (tx0 + dx <= tx1)
                keys.append((ty0[hit] + dy) * self.tiles_across + (tx0[hit] + dx))
        uses: dict[tuple[int, int], int] = {}
        if keys:
            k, n = np.unique(np.concatenate(keys), return_counts=True)
            across = self.tiles_across
            uses = {(int(i) // across, int(i) % across): int(c) for i, c in zip(k, n, strict=True)}
        self._uses = uses
        self._cache.clear()
        self._low_row = 1 << 62

    def _used(self, key: tuple[int, int]) -> None:
        """One declared read of ``key`` is done: drop the tile after its last one."""
        left = self._uses.get(key, 1) - 1  # type: ignore[union-attr]
        if left > 0:
            self._uses[key] = left  # type: ignore[index]
        else:
            self._uses.pop(key, None)  # type: ignore[union-attr]
            self._cache.pop(key, None)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()
        self._uses = None
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
            empty = self._counts[ty * self.tiles_across + tx] == 0  # sparse: background
            arr = None if empty else self._decode_tile(ty, tx)
            self._cache[key] = arr
            self._low_row = min(self._low_row, ty)
        return arr

    def _decode_tile(self, ty: int, tx: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decode TIFF tile ``(ty, tx)`` (not sparse); with ``out``, straight into it
        (JPEG pages only: the same libjpeg-turbo call with the same colour spaces that
        tifffile makes, minus the fresh array and the copy)."""
        i = ty * self.tiles_across + tx
        data = os.pread(self._fd, self._counts[i], self._offsets[i])
        try:
            if out is not None:
                import imagecodecs

                cs, ocs = self._jpeg  # type: ignore[misc]
                imagecodecs.jpeg_decode(
                    data, bitspersample=8, tables=self._jpegtables, colorspace=cs,
                    outcolorspace=ocs, shape=(self.tile_h, self.tile_w), out=out,
                )  # fmt: skip
                arr = out
            else:
                seg, _, _ = self._decode(data, i, jpegtables=self._jpegtables)
                arr = np.asarray(seg).reshape(seg.shape[-3:])[..., :3]
        except Exception as e:
            from wsimm.errors import SlideReadError

            raise SlideReadError(
                f"{self.path}: TIFF tile {i} (row {ty}, column {tx}) cannot be decoded "
                f"({type(e).__name__}: {e}); the file is damaged or truncated: re-copy it"
            ) from e
        self.decoded += 1
        return arr

    def read_into(self, location: tuple[int, int], out: np.ndarray) -> bool:
        """Decode the one TIFF tile at level-0 ``location`` straight into ``out`` when the
        read is exactly that tile (a grid aligned with the file's tiling), the page is
        JPEG, and no later declared read needs the tile again; ``False`` (nothing done)
        otherwise, and the caller reads and copies as usual."""
        if self._jpeg is None or self._uses is None:
            return False
        x, y = self._level_xy(location)
        h, w = self.tile_h, self.tile_w
        if x % w or y % h or x + w > self.width or y + h > self.height or x < 0 or y < 0:
            return False
        if out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            return False
        key = (y // h, x // w)
        i = key[0] * self.tiles_across + key[1]
        if key in self._cache or self._uses.get(key, 1) > 1 or self._counts[i] == 0:
            return False
        self._decode_tile(*key, out=out)
        self._used(key)
        return True

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
            key = (y // self.tile_h, x // self.tile_w)
            tile = self._tile(*key)
            if tile is not None:
                if self._uses is None:
                    self._evict(key[0])
                else:
                    self._used(key)  # the caller copies it before the next read
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
        if self._uses is None:
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
                else:
                    oy, ox = ty * self.tile_h, tx * self.tile_w
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                        sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox
                    ]
                if self._uses is not None:
                    self._used((ty, tx))
        return out

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """The ``Slide.read_region`` signature (level-0 ``location``); ``level`` is ignored:
        a reader serves the one level it was opened for."""
        lx, ly = self._level_xy(location)
        return self.read_level(lx, ly, int(size[0]), int(size[1]))


@dataclass(frozen=True)
class _Layout:
    """What a reader needs of a tiled TIFF page, read once per file and level (a
    gigapixel level has ~100k tiles: its offset tables are not rebuilt per chunk task)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    decode: Any
    jpegtables: bytes | None
    jpeg: tuple[Any, Any] | None = None  # JPEG (colorspace, outcolorspace) for read_into

    @classmethod
    def of(cls, page: Any) -> _Layout:
        jpeg = None
        if page.compression == 7 and page.samplesperpixel == 3 and page.bitspersample == 8:
            try:
                from tifffile.tifffile import jpeg_decode_colorspace

                jpeg = jpeg_decode_colorspace(
                    page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
                )
            except (ImportError, AttributeError):  # another tifffile: the generic path only
                jpeg = None
        return cls(
            height=int(page.imagelength),
            width=int(page.imagewidth),
            tile_h=int(page.tilelength),
            tile_w=int(page.tilewidth),
            offsets=tuple(int(v) for v in page.dataoffsets),
            counts=tuple(int(v) for v in page.databytecounts),
            decode=page.decode,
            jpegtables=page.jpegtables,
            jpeg=jpeg,
        )


_PAGES: dict[tuple[str, int, float], _Layout | None] = {}
_PAGES_LOCK = threading.Lock()


def _find_page(path: str, level: int, dims: tuple[int, int]) -> _Layout | None:
    """The layout of ``level``'s tifffile page if it is a tiled 8-bit RGB(A) page of the
    right size."""
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
        return _Layout.of(page)  # everything the reader needs, read while the file is open


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
