"""Deep-zoom pyramid geometry, tiles cut from a slide on demand, and a byte-bounded cache.

The pyramid follows the Deep Zoom convention (as OpenSeadragon and openslide's DeepZoomGenerator
use it): level ``L`` of ``max_level + 1`` is the slide downsampled by ``2 ** (max_level - L)``
(rounded up), so the top level is level 0 at full resolution and level 0 is one pixel; tiles are
``tile`` pixels square except at the right and bottom edges, where they are cut to the level.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsimm.errors import ConfigError

__all__ = ["DeepZoom", "TileCache", "encode_image", "read_dz_tile"]


@dataclass(frozen=True)
class DeepZoom:
    """The pyramid of a ``width x height`` level-0 image cut into ``tile`` px tiles."""

    width: int
    height: int
    tile: int = 256

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def downsample(self, level: int) -> int:
        """Level-0 pixels per pixel of ``level``."""
        return 2 ** (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        ds = self.downsample(level)
        return max(1, math.ceil(self.width / ds)), max(1, math.ceil(self.height / ds))

    def grid(self, level: int) -> tuple[int, int]:
        """Columns and rows of tiles at ``level``."""
        w, h = self.level_size(level)
        return math.ceil(w / self.tile), math.ceil(h / self.tile)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int, int]:
        """``(x0, y0, w, h, ds)``: the tile's level-0 top-left, its size in level pixels and
        the level's downsample. Raises :class:`~wsimm.errors.ConfigError` outside the pyramid."""
        if not 0 <= level <= self.max_level:
            raise ConfigError(f"level {level} outside 0..{self.max_level}")
        cols, rows = self.grid(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise ConfigError(f"tile {col},{row} outside the {cols}x{rows} grid of level {level}")
        lw, lh = self.level_size(level)
        ds = self.downsample(level)
        x, y = col * self.tile, row * self.tile
        return x * ds, y * ds, min(self.tile, lw - x), min(self.tile, lh - y), ds

    def to_dict(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height, "tile": self.tile,
                "max_level": self.max_level}  # fmt: skip


def read_dz_tile(slide: Any, dz: DeepZoom, level: int, col: int, row: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 pixels of one deep-zoom tile, read from the slide's best pyramid
    level for the downsample and resized with an area filter when that level is finer. At a
    level the slide stores (full resolution included) the tile is exactly ``read_region``."""
    from PIL import Image

    x0, y0, w, h, ds = dz.tile_box(level, col, row)
    sl = slide.get_best_level_for_downsample(ds)
    lds = float(slide.level_downsamples[sl])
    rw, rh = max(1, math.ceil(w * ds / lds)), max(1, math.ceil(h * ds / lds))
    if abs(lds - ds) <= 1e-6 * ds:
        return slide.read_region((x0, y0), sl, (w, h))
    px = slide.read_region((x0, y0), sl, (rw, rh))
    # the region of the level read that the tile covers (the last tile may cover less)
    box = (0.0, 0.0, w * ds / lds, h * ds / lds)
    return np.asarray(Image.fromarray(px).resize((w, h), Image.Resampling.BOX, box=box))


def encode_image(a: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    """JPEG (RGB) or PNG (RGBA) bytes of an array."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(a).save(buf, "JPEG", quality=quality)
    else:
        Image.fromarray(a).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class TileCache:
    """A thread-safe LRU cache of encoded tiles, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._items.get(key)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: Any, value: bytes) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            if len(value) > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, v = self._items.popitem(last=False)
                self._bytes -= len(v)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
