"""Opening slides: backend probing, fallback, DICOM folders, and a reader cache."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from wsimm.errors import (
    ConfigError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
    WsimmError,
)
from wsimm.slide import _openslide
from wsimm.slide._base import Slide, SlideInfo
from wsimm.slide._tiffslide import TiffSlideSlide

__all__ = [
    "BACKENDS",
    "SLIDE_SUFFIXES",
    "InspectResult",
    "clear_cache",
    "find_slides",
    "inspect_slides",
    "is_url",
    "list_backends",
    "open_slide",
    "open_slide_cached",
]

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


def _is_dicom_dir(q: Path) -> bool:
    """A folder whose (non-hidden) files are all DICOM instances: one DICOM slide."""
    files = [c for c in q.iterdir() if c.is_file() and not c.name.startswith(".")]
    return bool(files) and all(c.suffix.lower() == ".dcm" for c in files)


def find_slides(paths: list[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str]:
    """Expand files and folders into a sorted list of slide paths.

    A folder of DICOM instances is one slide; any other folder contributes its files with a
    slide suffix (see :data:`SLIDE_SUFFIXES`) and its DICOM sub-folders, not recursing
    further. URLs pass through. A path that does not exist raises
    :class:`SlideNotFoundError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for raw in paths:
        p = os.fspath(raw)
        if is_url(p):
            out.append(p)
            continue
        q = Path(p)
        if not q.exists():
            raise SlideNotFoundError(f"{p}: no such file or folder; check the path")
        if q.is_file():
            out.append(str(q))
            continue
        if _is_dicom_dir(q):
            out.append(str(q))
            continue
        found = []
        for c in sorted(q.iterdir()):
            is_slide_file = c.is_file() and c.suffix.lower() in SLIDE_SUFFIXES
            if is_slide_file or (c.is_dir() and _is_dicom_dir(c)):
                found.append(str(c))
        if not found:
            below, globs = _slides_below(q)
            hint = (
                f"; {below} sub-folder(s) hold slides (a GDC download keeps each slide in its "
                f"own folder): pass them, e.g. {' '.join(globs)}"
                if below
                else f" ({', '.join(SLIDE_SUFFIXES)})"
            )
            raise SlideNotFoundError(f"{p}: folder holds no slide files{hint}")
        out.extend(found)
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]


def _slides_below(folder: Path) -> tuple[int, list[str]]:
    """How many sub-folders of ``folder`` (at any depth) hold slide files or are DICOM
    slides, and shell patterns that name those slides alone (``gdc/*/*.svs``: a plain
    ``gdc/*`` would take a GDC download's ``logs`` folder too, which holds none)."""
    n, globs = 0, set()
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here == folder:
            continue
        stars = ["*"] * len(here.relative_to(folder).parts)
        suffixes = {Path(f).suffix.lower() for f in files} & set(SLIDE_SUFFIXES)
        if _is_dicom_dir(here):
            globs.add(str(folder.joinpath(*stars)) + os.sep)
        elif suffixes:
            globs.update(str(folder.joinpath(*stars, f"*{x}")) for x in suffixes)
        else:
            continue
        n += 1
        dirs.clear()  # a slide's own folder (MRXS data, DICOM instances): not further
    return n, sorted(globs)


@dataclass(frozen=True)
class InspectResult:
    """Outcome of reading one slide's metadata: ``info`` or a one-line ``error``."""

    path: str
    info: SlideInfo | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def inspect_slides(
    paths: list[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    backend: str = "auto",
    mpp: float | None = None,
) -> list[InspectResult]:
    """Read the metadata of every slide under ``paths`` (files or folders).

    A slide that cannot be read gives an :class:`InspectResult` with its one-line error
    instead of stopping the others.
    """
    out: list[InspectResult] = []
    for raw in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        try:
            items = find_slides(raw)
        except WsimmError as e:
            out.append(InspectResult(os.fspath(raw), error=str(e)))
            continue
        for p in items:
            try:
                with open_slide(p, backend=backend, mpp=mpp) as s:
                    out.append(InspectResult(p, info=s.info()))
            except WsimmError as e:
                out.append(InspectResult(p, error=str(e)))
    return out
