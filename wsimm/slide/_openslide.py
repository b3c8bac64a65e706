"""The openslide backend (C library from the ``openslide-bin`` wheel)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from wsimm.errors import MissingDependencyError, SlideReadError, UnsupportedSlideError
from wsimm.slide._base import Slide

__all__ = ["OpenSlideSlide", "available", "detect"]


def _module() -> Any:
    try:
        import openslide
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "openslide-python", extra="openslide", feature="the openslide backend"
        ) from e
    return openslide


def available() -> bool:
    """True when openslide-python and the OpenSlide library import."""
    try:
        _module()
    except (MissingDependencyError, OSError):
        return False
    return True


def detect(path: str) -> str | None:
    """The openslide vendor name for ``path``, or ``None`` when openslide cannot read it."""
    try:
        return _module().OpenSlide.detect_format(path)
    except Exception:
        return None


# Vendor-specific keys that openslide derives ``openslide.mpp-x`` from, in order of preference,
# so the MPP source names the key the scanner actually wrote.
_MPP_KEYS = (
    ("aperio.MPP", "aperio.MPP"),
    ("tiff.XResolution", "tiff.YResolution"),
)


#: openslide's default tile cache, per slide
_CACHE_BYTES = 32 * 1024 * 1024


class OpenSlideSlide(Slide):
    """A slide read through openslide. The handle is shared by threads without locking
    (openslide is thread-safe)."""

    backend = "openslide"

    def __init__(self, path: str, *, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        openslide = _module()
        try:
            self._osr = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError as e:
            raise UnsupportedSlideError(f"{path}: openslide does not recognise this format") from e
        except openslide.OpenSlideError as e:
            raise SlideReadError(f"{path}: openslide cannot read the file ({e})") from e
        self._props = dict(self._osr.properties)
        if "openslide.mpp-x" in self._props or "openslide.mpp-y" in self._props:
            source = "openslide.mpp-x"
            for kx, _ky in _MPP_KEYS:
                if kx in self._props:
                    source = kx
                    break
            self._set_mpp(
                self._props.get("openslide.mpp-x"), self._props.get("openslide.mpp-y"), source
            )
        self._apply_override()
        self._dims = tuple(tuple(int(v) for v in d) for d in self._osr.level_dimensions)
        self._ds = tuple(float(d) for d in self._osr.level_downsamples)
        if not self._dims or min(self._dims[0]) <= 0:
            raise UnsupportedSlideError(f"{path}: slide has no pixels (dimensions {self._dims})")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims  # type: ignore[return-value]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._ds

    @property
    def vendor(self) -> str | None:
        return self._props.get("openslide.vendor")

    @property
    def objective_power(self) -> float | None:
        try:
            return float(self._props["openslide.objective-power"])
        except (KeyError, ValueError):
            return None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._osr.associated_images.keys()))

    def _associated_image(self, name: str) -> Any:
        return self._osr.associated_images[name]

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        try:
            return np.asarray(self._osr.read_region(location, level, size))
        except Exception as e:
            raise SlideReadError(
                f"{self.path}: openslide failed reading {size} at {location} level {level} "
                f"({e}); the file may be damaged or truncated: re-copy it"
            ) from e

    def drop_tile_cache(self) -> None:
        """Empty openslide's cache of decoded tiles (it keeps up to 32 MiB per slide): a
        fresh cache of the same size replaces it, where openslide supports that (4.0+)."""
        openslide = _module()
        cache = getattr(openslide, "OpenSlideCache", None)
        if cache is None:
            return
        with contextlib.suppress(openslide.OpenSlideError):  # a library without cache control
            self._osr.set_cache(cache(_CACHE_BYTES))

    def close(self) -> None:
        self._osr.close()
