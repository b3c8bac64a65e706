"""The backend-independent :class:`Slide` interface and pixel conversion."""

from __future__ import annotations

import functools
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wsimm.errors import ConfigError, MissingMPPError, SlideReadError

__all__ = ["MPP_RANGE", "Slide", "SlideInfo", "as_rgb_uint8"]

#: Physical pixel sizes (µm/px) a microscope slide can plausibly have. Values outside this
#: range are almost always a screen-resolution default (72 dpi gives 352.8 µm/px) and are
#: reported but not used.
MPP_RANGE = (0.02, 50.0)


@dataclass(frozen=True)
class SlideInfo:
    """Metadata of one slide, as shown by ``wsimm info``."""

    path: str
    backend: str
    vendor: str | None
    width: int
    height: int
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    mpp_source: str | None
    mpp_note: str | None = None
    objective_power: float | None = None
    associated_images: tuple[str, ...] = ()
    file_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["level_dimensions"] = [list(x) for x in self.level_dimensions]
        d["level_downsamples"] = list(self.level_downsamples)
        d["associated_images"] = list(self.associated_images)
        return d


def as_rgb_uint8(a: np.ndarray) -> np.ndarray:
    """Convert a pixel array from any common slide layout to ``(H, W, 3)`` RGB uint8.

    - greyscale ``(H, W)`` or ``(H, W, 1)`` is replicated to three channels;
    - grey + alpha ``(H, W, 2)`` and RGBA ``(H, W, 4)`` are composited onto white (transparent
      pixels, e.g. outside the scanned area, become background white, never black);
    - 16-bit integers are mapped linearly from the full 0..65535 range (``v / 257``);
    - floats are taken to be in ``[0, 1]``.
    """
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise SlideReadError(f"cannot convert pixel array of shape {a.shape} to RGB")
    if a.dtype != np.uint8:
        if a.dtype == np.uint16:
            a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            scale = 255.0 / max(info.max, 1)
            a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        else:
            raise SlideReadError(f"unsupported pixel type {a.dtype}")
    c = a.shape[2]
    if c in (2, 4):
        colour, alpha = a[:, :, : c - 1], a[:, :, c - 1 :]
        if alpha.min() < 255:
            al = alpha.astype(np.uint16)
            colour = ((colour.astype(np.uint16) * al + 255 * (255 - al) + 127) // 255).astype(
                np.uint8
            )
        a = colour
        c -= 1
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 3:
        return np.ascontiguousarray(a)
    raise SlideReadError(f"cannot convert a {c}-channel image to RGB")


def plausible_mpp(value: float | None) -> bool:
    """True when ``value`` is a finite µm/px inside :data:`MPP_RANGE`."""
    return value is not None and math.isfinite(value) and MPP_RANGE[0] <= value <= MPP_RANGE[1]


def _to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


class Slide(ABC):
    """One open whole-slide image, whatever the backend.

    Coordinates follow openslide: ``(x, y)`` in level-0 pixels, sizes as ``(width, height)``.
    Pixel data always comes back as ``(H, W, 3)`` RGB ``uint8`` numpy arrays; regions that
    extend past the slide are filled with white. Instances are safe to share between threads
    and pickle to a recipe (path, backend, MPP override) so Dask workers reopen the file
    themselves instead of receiving pixels.
    """

    backend: str = ""

    def __init__(self, path: str, *, mpp: float | None = None) -> None:
        self.path = path
        self._mpp_override = mpp
        self._props: dict[str, str] = {}
        self._mpp_x: float | None = None
        self._mpp_y: float | None = None
        self._mpp_source: str | None = None
        self._mpp_note: str | None = None

    # -- backend hooks -------------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every pyramid level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""

    @property
    @abstractmethod
    def vendor(self) -> str | None:
        """Scanner vendor / format family as the backend detected it."""

    @property
    @abstractmethod
    def associated_image_names(self) -> tuple[str, ...]:
        """Names of the associated images (``thumbnail``, ``label``, ``macro`` ...)."""

    @abstractmethod
    def _associated_image(self, name: str) -> Any:
        """Return the raw associated image (PIL image or array)."""

    @abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        """Read an in-bounds region; may return any pixel layout :func:`as_rgb_uint8` takes."""

    @abstractmethod
    def close(self) -> None:
        """Release file handles."""

    def drop_tile_cache(self) -> None:
        """Free the reader's cache of decoded tiles, if it has one (after a whole-slide pass
        such as the tissue thumbnail, whose tiles are not read again). This reader keeps
        none."""
        return None

    # -- metadata ------------------------------------------------------------------------
    @property
    def properties(self) -> Mapping[str, str]:
        """Raw metadata key/values as the backend reports them."""
        return self._props

    def _set_mpp(self, x: Any, y: Any, source: str | None) -> None:
        """Record the MPP found in metadata, or why it was not used."""
        fx, fy = _to_float(x), _to_float(y)
        if fx is None and fy is None:
            return
        fx = fx if fx is not None else fy
        fy = fy if fy is not None else fx
        if self._mpp_override is not None:
            self._mpp_note = f"metadata {source} says {fx:.4g} µm/px; overridden by the user"
            return
        if not (plausible_mpp(fx) and plausible_mpp(fy)):
            self._mpp_note = (
                f"{source} gives {fx:.4g} µm/px, outside the plausible microscope range "
                f"{MPP_RANGE[0]}-{MPP_RANGE[1]} (likely a screen-dpi default); ignored"
            )
            return
        self._mpp_x, self._mpp_y, self._mpp_source = fx, fy, source

    def _apply_override(self) -> None:
        if self._mpp_override is None:
            return
        v = _to_float(self._mpp_override)
        if v is None or not plausible_mpp(v):
            raise ConfigError(
                f"{self.path}: MPP override {self._mpp_override!r} is not a plausible µm/px "
                f"(expected {MPP_RANGE[0]}-{MPP_RANGE[1]}, e.g. 0.25 at 40x, 0.5 at 20x)"
            )
        self._mpp_x = self._mpp_y = v
        self._mpp_source = "user override"

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp_x(self) -> float | None:
        return self._mpp_x

    @property
    def mpp_y(self) -> float | None:
        return self._mpp_y

    @property
    def mpp(self) -> float | None:
        """Level-0 µm/px (the mean of x and y), or ``None`` when unknown."""
        if self._mpp_x is None or self._mpp_y is None:
            return None
        return (self._mpp_x + self._mpp_y) / 2.0

    @property
    def mpp_source(self) -> str | None:
        """Where the MPP came from: a metadata key, ``"user override"``, or ``None``."""
        return self._mpp_source

    def require_mpp(self) -> float:
        """Return the MPP or raise :class:`MissingMPPError` saying how to supply one."""
        if self.mpp is None:
            why = f" ({self._mpp_note})" if self._mpp_note else ""
            raise MissingMPPError(
                f"{self.path}: the slide does not record its pixel size{why}; "
                "pass it with --slide-mpp (µm per level-0 pixel, e.g. 0.25 at 40x, 0.5 at 20x)"
            )
        return self.mpp

    @property
    def objective_power(self) -> float | None:
        return None

    def info(self) -> SlideInfo:
        """Return the slide's metadata as a :class:`SlideInfo`."""
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = None
        return SlideInfo(
            path=self.path,
            backend=self.backend,
            vendor=self.vendor,
            width=self.dimensions[0],
            height=self.dimensions[1],
            level_count=self.level_count,
            level_dimensions=tuple(tuple(int(v) for v in d) for d in self.level_dimensions),
            level_downsamples=tuple(float(d) for d in self.level_downsamples),
            mpp_x=self.mpp_x,
            mpp_y=self.mpp_y,
            mpp_source=self.mpp_source,
            mpp_note=self._mpp_note,
            objective_power=self.objective_power,
            associated_images=self.associated_image_names,
            file_size=size,
        )

    # -- pixels --------------------------------------------------------------------------
    def get_best_level_for_downsample(self, downsample: float) -> int:
        """Index of the highest-resolution level whose downsample does not exceed
        ``downsample`` (with a small tolerance for scanners' rounding)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` = ``(w, h)`` pixels of ``level`` starting at level-0 ``location``.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` RGB uint8; pixels outside the slide are white.
        """
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if not 0 <= level < self.level_count:
            raise ConfigError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        if w <= 0 or h <= 0:
            raise ConfigError(f"region size must be positive, got {size}")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # region in level pixels
        lx0, ly0 = x / ds, y / ds
        ix0, iy0 = max(0, math.floor(lx0)), max(0, math.floor(ly0))
        ix1, iy1 = min(lw, math.floor(lx0) + w), min(lh, math.floor(ly0) + h)
        inside = lx0 >= 0 and ly0 >= 0 and lx0 + w <= lw and ly0 + h <= lh
        if inside:
            return as_rgb_uint8(self._read((x, y), level, (w, h)))
        out = np.full((h, w, 3), 255, np.uint8)
        if ix1 <= ix0 or iy1 <= iy0:
            return out
        px, py = ix0 - math.floor(lx0), iy0 - math.floor(ly0)
        part = as_rgb_uint8(
            self._read((round(ix0 * ds), round(iy0 * ds)), level, (ix1 - ix0, iy1 - iy0))
        )
        out[py : py + part.shape[0], px : px + part.shape[1]] = part
        return out

    def get_thumbnail(self, max_size: tuple[int, int] = (1024, 1024)) -> np.ndarray:
        """A thumbnail that fits in ``max_size`` = ``(w, h)``, keeping the aspect ratio.

        Reads the best pyramid level in horizontal strips and resizes each strip with an
        area filter, so memory stays bounded even for slides without a pyramid.
        """
        mw, mh = max_size
        w0, h0 = self.dimensions
        ds = max(w0 / mw, h0 / mh, 1.0)
        return self.read_downsampled(ds)

    def downsampled_shape(self, downsample: float) -> tuple[int, int]:
        """``(H, W)`` of :meth:`read_downsampled` at ``downsample``."""
        w0, h0 = self.dimensions
        return max(1, round(h0 / downsample)), max(1, round(w0 / downsample))

    def iter_downsampled(
        self, downsample: float, *, strip_pixels: int = 1 << 20
    ) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`read_downsampled` one strip at a time: ``(first output row, rows)`` pairs,
        top to bottom, each strip ``(rows, W, 3)`` uint8 and read from about ``strip_pixels``
        pixels of the pyramid level. A consumer that reduces each strip (tissue detection
        without a kept thumbnail) never holds the whole image."""
        from PIL import Image

        oh, ow = self.downsampled_shape(downsample)
        level = self.get_best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        sy = lh / oh  # level rows per output row
        rows_per_strip = max(1, int(max(1, strip_pixels // lw) / sy))
        for r0 in range(0, oh, rows_per_strip):
            r1 = min(oh, r0 + rows_per_strip)
            ly0, ly1 = r0 * sy, r1 * sy
            iy0, iy1 = math.floor(ly0), min(lh, math.ceil(ly1))
            strip = self.read_region((0, round(iy0 * lds)), level, (lw, max(1, iy1 - iy0)))
            if (lw, iy1 - iy0) == (ow, r1 - r0):
                yield r0, strip
                continue
            img = Image.fromarray(strip)
            del strip
            box = (0.0, ly0 - iy0, float(lw), ly1 - iy0)
            yield r0, np.asarray(img.resize((ow, r1 - r0), Image.Resampling.BOX, box=box))

    def read_downsampled(self, downsample: float, *, strip_pixels: int = 1 << 20) -> np.ndarray:
        """The whole slide at ``downsample`` (relative to level 0), as ``(H, W, 3)`` uint8.

        Output size is ``round(w0 / downsample) x round(h0 / downsample)``. The level is read
        in full-width strips of about ``strip_pixels`` pixels, so memory stays at the output
        plus one strip even for a slide without a pyramid.
        """
        out = np.empty((*self.downsampled_shape(downsample), 3), np.uint8)
        for r0, strip in self.iter_downsampled(downsample, strip_pixels=strip_pixels):
            out[r0 : r0 + len(strip)] = strip
        return out

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``thumbnail``, ``label``, ``macro`` ...) as RGB uint8."""
        if name not in self.associated_image_names:
            raise KeyError(
                f"{self.path} has no associated image {name!r}; "
                f"available: {', '.join(self.associated_image_names) or 'none'}"
            )
        return as_rgb_uint8(np.asarray(self._associated_image(name)))

    # -- plumbing ------------------------------------------------------------------------
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # the same backend class on the same (already resolved) path: this module needs no
        # import of the opener, which imports it
        return (functools.partial(type(self), self.path, mpp=self._mpp_override), ())

    def __repr__(self) -> str:
        try:
            w, h = self.dimensions
        except (AttributeError, IndexError):
            return f"<{type(self).__name__} {self.path!r} (not open)>"
        mpp = f"{self.mpp:.4g}" if self.mpp else "?"
        return f"<{type(self).__name__} {os.path.basename(self.path)!r} {w}x{h} mpp={mpp}>"
