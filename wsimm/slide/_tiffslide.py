"""The tiffslide backend (pure Python over tifffile; reads fsspec URLs)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any

from wsimm.errors import SlideReadError, UnsupportedSlideError
from wsimm.slide._base import Slide

__all__ = ["TiffSlideSlide"]


def _describe_tiff(path: str) -> str | None:
    """Why a TIFF that tiffslide refuses is not a 2-D slide, if tifffile can tell."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            if s.ndim > 3 or (s.ndim == 3 and s.shape[-1] not in (1, 2, 3, 4)):
                return (
                    f"its first image series has {s.ndim} dimensions (axes {s.axes}, shape "
                    f"{s.shape}); wsimm reads 2-D RGB or greyscale whole-slide images"
                )
    except Exception:
        return None
    return None


class TiffSlideSlide(Slide):
    """A slide read through tiffslide. Each thread gets its own tiffslide handle, so
    concurrent reads never share tifffile state."""

    backend = "tiffslide"

    def __init__(self, path: str, *, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        ts = self._handle()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                props = dict(ts.properties)
                level_dims, level_ds = ts.level_dimensions, ts.level_downsamples
                assoc = tuple(sorted(ts.associated_images))
        except Exception as e:
            self.close()
            raise self._error(e) from e
        self._props = {k: str(v) for k, v in props.items() if v is not None}
        mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        if mx is not None or my is not None:
            source = "tiffslide.mpp-x"
            for key in ("aperio.MPP", "tiff.XResolution"):
                if props.get(key) is not None:
                    source = key
                    break
            self._set_mpp(mx, my, source)
        self._apply_override()
        self._dims = tuple(tuple(int(v) for v in d) for d in level_dims)
        self._ds = tuple(float(d) for d in level_ds)
        self._vendor = props.get("tiffslide.vendor")
        self._objective = props.get("tiffslide.objective-power")
        self._assoc = assoc
        if not self._dims or min(self._dims[0]) <= 0:
            raise UnsupportedSlideError(f"{path}: slide has no pixels (dimensions {self._dims})")

    def _handle(self) -> Any:
        ts = getattr(self._local, "ts", None)
        if ts is None:
            import tiffslide

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    ts = tiffslide.TiffSlide(self.path)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise self._error(e) from e
            self._local.ts = ts
            with self._lock:
                self._handles.append(ts)
        return ts

    def _error(self, e: BaseException) -> SlideReadError:
        if isinstance(e, SlideReadError):
            return e
        if isinstance(e, NotImplementedError):
            why = _describe_tiff(self.path) or f"tiffslide does not support it ({e})"
            return UnsupportedSlideError(f"{self.path}: not a whole-slide image: {why}")
        if "not a TIFF file" in str(e):
            return UnsupportedSlideError(f"{self.path}: tiffslide reads only TIFF-based files")
        return SlideReadError(
            f"{self.path}: tiffslide cannot read the file ({type(e).__name__}: {e})"
        )

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims  # type: ignore[return-value]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._ds

    @property
    def vendor(self) -> str | None:
        return self._vendor or "generic-tiff"

    @property
    def objective_power(self) -> float | None:
        try:
            return float(self._objective) if self._objective is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return self._assoc

    def _associated_image(self, name: str) -> Any:
        return self._handle().associated_images[name]

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        try:
            return self._handle().read_region(location, level, size, as_array=True)
        except Exception as e:
            raise SlideReadError(
                f"{self.path}: tiffslide failed reading {size} at {location} level {level} "
                f"({type(e).__name__}: {e}); the file may be damaged or truncated: re-copy it"
            ) from e

    def close(self) -> None:
        with self._lock:
            for ts in self._handles:
                with contextlib.suppress(Exception):  # best effort
                    ts.close()
            self._handles.clear()
        self._local = threading.local()
