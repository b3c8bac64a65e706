"""Opening slides: backend probing, fallback, DICOM folders, and a reader cache."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from wsimm.errors import ConfigError, SlideNotFoundError, SlideReadError, UnsupportedSlideError
from wsimm.slide import _openslide
from wsimm.slide._base import Slide
from wsimm.slide._tiffslide import TiffSlideSlide

__all__ = ["BACKENDS", "clear_cache", "is_url", "list_backends", "open_slide", "open_slide_cached"]

#: Backend name -> class, in order of preference for local files.
BACKENDS: dict[str, type[Slide]] = {
    "openslide": _openslide.OpenSlideSlide,
    "tiffslide": TiffSlideSlide,
}

#: File name suffixes wsimm treats as slides when a folder is given.
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm", ".qptiff",
)  # fmt: skip


def is_url(path: str) -> bool:
    """True for fsspec URLs (``s3://``, ``https://`` ...), false for local paths."""
    return "://" in path and not path.startswith("file://")


def list_backends() -> dict[str, bool]:
    """Backend name -> whether it can be used in this environment."""
    return {"openslide": _openslide.available(), "tiffslide": True}


def _resolve_local(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError(f"{path}: no such file or folder; check the path")
    if p.is_dir():
        # a DICOM whole-slide image is a folder of .dcm instances; openslide opens any one
        dcm = sorted(q for q in p.iterdir() if q.suffix.lower() == ".dcm" and q.is_file())
        if not dcm:
            raise UnsupportedSlideError(
                f"{path}: is a folder without DICOM (.dcm) files; pass a slide file, "
                "or a folder of slides to commands that take several"
            )
        p = dcm[0]
    if p.stat().st_size == 0:
        raise SlideReadError(f"{p}: file is empty (0 bytes); re-copy or re-download it")
    return str(p)


def _short(e: BaseException, path: str) -> str:
    msg = str(e).replace(f"{path}: ", "").strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def open_slide(
    path: str | os.PathLike[str], *, backend: str = "auto", mpp: float | None = None
) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        A slide file, a DICOM folder, or an fsspec URL (read through tiffslide).
    backend
        ``"auto"`` (probe the file: openslide when it recognises the format, else tiffslide,
        falling back to the other on failure), ``"openslide"`` or ``"tiffslide"``.
    mpp
        Level-0 µm/px to use instead of (or in the absence of) the slide's metadata; recorded
        as ``mpp_source == "user override"``.

    Returns
    -------
    Slide
        The open slide; ``slide.backend`` says which backend was used.

    Raises
    ------
    SlideNotFoundError, SlideReadError, UnsupportedSlideError
        With a one-line message naming the file and the reason.
    """
    path = os.fspath(path)
    if backend not in ("auto", *BACKENDS):
        raise ConfigError(f"unknown slide backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if is_url(path):
        if backend == "openslide":
            raise ConfigError(f"{path}: openslide cannot read URLs; use --backend tiffslide")
        return TiffSlideSlide(path, mpp=mpp)
    local = _resolve_local(path)

    if backend != "auto":
        if backend == "openslide" and not _openslide.available():
            raise SlideReadError(
                f"{local}: the openslide backend is not installed; "
                "pip install 'wsimm[openslide]' or use --backend tiffslide"
            )
        return BACKENDS[backend](local, mpp=mpp)

    order: list[str] = []
    if _openslide.available() and _openslide.detect(local) is not None:
        order = ["openslide", "tiffslide"]
    else:
        order = ["tiffslide"]
    errors: list[tuple[str, BaseException]] = []
    for name in order:
        try:
            return BACKENDS[name](local, mpp=mpp)
        except ConfigError:
            raise
        except (SlideReadError, OSError, ValueError, KeyError, IndexError) as e:
            errors.append((name, e))
    # Prefer a specific "this is not a slide" explanation over generic read errors.
    specific = [e for _, e in errors if isinstance(e, UnsupportedSlideError) and "not a" in str(e)]
    if specific:
        raise specific[0]
    detail = "; ".join(f"{n}: {_short(e, local)}" for n, e in errors)
    if "openslide" not in order:
        detail = "openslide: format not recognised; " + detail
    raise UnsupportedSlideError(
        f"{local}: not a whole-slide image wsimm can read ({detail}); "
        "supported: SVS, NDPI, MRXS, SCN, BIF, DICOM, generic tiled TIFF/OME-TIFF"
    )


class _ReaderCache:
    """A small thread-safe LRU of open slides keyed by path, backend, MPP and file identity."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[object, ...], Slide] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, backend: str, mpp: float | None) -> Slide:
        ident: tuple[object, ...] = ()
        if not is_url(path):
            try:
                st = os.stat(path)
                ident = (st.st_mtime_ns, st.st_size)
            except OSError:
                ident = ()
        key = (path, backend, mpp, *ident)
        with self._lock:
            slide = self._items.get(key)
            if slide is not None:
                self._items.move_to_end(key)
                return slide
        slide = open_slide(path, backend=backend, mpp=mpp)
        with self._lock:
            if key in self._items:  # another thread won the race
                slide.close()
                return self._items[key]
            self._items[key] = slide
            while len(self._items) > self.maxsize:
                _, old = self._items.popitem(last=False)
                old.close()
        return slide

    def clear(self) -> None:
        with self._lock:
            for s in self._items.values():
                s.close()
            self._items.clear()


_CACHE = _ReaderCache()


def open_slide_cached(
    path: str | os.PathLike[str], *, backend: str = "auto", mpp: float | None = None
) -> Slide:
    """Like :func:`open_slide` but returns a shared, cached reader (for tilers and workers).

    Do not close the returned slide; :func:`clear_cache` closes them all.
    """
    return _CACHE.get(os.fspath(path), backend, mpp)


def clear_cache() -> None:
    """Close every cached reader."""
    _CACHE.clear()
