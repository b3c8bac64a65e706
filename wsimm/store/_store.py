"""The cohort feature store: one Zarr v3 group per cohort, one sub-group per slide.

Layout (see docs/store-format.md)::

    cohort.zarr/                 attrs["wsimm"] = {encoding-type, encoding-version, created_by}
      slides/<slide_id>/         attrs: provenance + status ("complete" written last)
        coords          (N, 2) int64
        tissue_fraction (N,)   float16
        tissue_mask     (h, w) uint8, attrs: downsample
        features/<encoder>  (N, D) float16, attrs: encoder cfg, weights fingerprint, complete

A slide whose status is not ``complete`` is invisible to readers and is redone on resume.
"""

from __future__ import annotations

import os
import re
import socket
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wsimm._version import __version__
from wsimm.errors import ConfigError, StoreError, StoreFormatError, StoreLockedError, WsimmError

__all__ = [
    "ENCODING_TYPE",
    "ENCODING_VERSION",
    "FeatureStore",
    "chunk_rows",
    "discard_if_left_empty",
    "open_store",
    "sanitize_slide_id",
]

ENCODING_TYPE = "wsimm-feature-store"
ENCODING_VERSION = 1
_ID_BAD = re.compile(r"[^\w.\-+]", re.UNICODE)


def sanitize_slide_id(name: str) -> str:
    """A safe slide id from a file name: no ``/``, ``..``, control or odd characters.

    Characters other than letters, digits, ``. - _ +`` become ``_``; leading dots are
    dropped. Raises :class:`ConfigError` when nothing usable remains.
    """
    s = unicodedata.normalize("NFC", name)
    s = "".join(ch if ch.isprintable() else "_" for ch in s)
    s = _ID_BAD.sub("_", s).lstrip(".")
    s = re.sub(r"\.{2,}", "_", s)
    if not s or s in {"_", "."}:
        raise ConfigError(f"cannot make a slide id from {name!r}; rename the file")
    return s[:200]


def slide_id_from_path(path: str) -> str:
    """``slide_id`` from a slide path: file name without its slide suffix(es)."""
    base = os.path.basename(os.path.normpath(path.rstrip("/")))
    low = base.lower()
    for suf in (".ome.tiff", ".ome.tif"):
        if low.endswith(suf):
            return sanitize_slide_id(base[: -len(suf)])
    stem, ext = os.path.splitext(base)
    return sanitize_slide_id(stem if ext else base)


def chunk_rows(embed_dim: int) -> int:
    """Rows per chunk along N: about 1 MiB of float16 features, between 256 and 1024 rows
    (a chunk is also the unit of work of a tiling task, so it should not get much longer)."""
    return int(min(1024, max(256, (1 << 20) // max(1, 2 * embed_dim))))


def read_downsample(attrs: dict[str, Any]) -> float:
    """The downsample of the pyramid level a slide's tiles are read from, from its store
    attributes; slides imported by earlier versions did not record it (level 0: 1; a higher
    level: the footprint over the tile's pixels)."""
    if attrs.get("read_downsample"):
        return float(attrs["read_downsample"])
    if int(attrs.get("read_level", 0)) == 0:
        return 1.0
    return float(attrs["tile_size0"]) / int(attrs["tile_px"])


def encoder_id(name: str) -> str:
    """The store key of an encoder name: ``timm:resnet18`` -> ``timm-resnet18`` (keys are
    file names on every file system)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "encoder"


class FeatureStore:
    """Read (and, for wsimm's own pipeline, write) a cohort feature store."""

    def __init__(self, group: Any, path: str, *, mode: str) -> None:
        self._root = group
        self.path = path
        self.mode = mode

    # -- reading ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs.get("wsimm", {}))

    def _slides_group(self) -> Any | None:
        try:
            return self._root["slides"]
        except KeyError:
            return None

    def all_slide_ids(self) -> list[str]:
        """Every slide group, complete or not."""
        g = self._slides_group()
        return sorted(g.group_keys()) if g is not None else []

    def slides(self) -> list[str]:
        """Ids of complete slides (the only ones readers should see)."""
        g = self._slides_group()
        if g is None:
            return []
        return [k for k in sorted(g.group_keys()) if g[k].attrs.get("status") == "complete"]

    def __contains__(self, slide_id: str) -> bool:
        """Whether ``slide_id`` is a complete slide (reads that slide's attributes only)."""
        g = self._slides_group()
        return g is not None and slide_id in g and g[slide_id].attrs.get("status") == "complete"

    def _slide(self, slide_id: str, *, complete: bool = True) -> Any:
        g = self._slides_group()
        if g is None or slide_id not in g:
            raise KeyError(f"{self.path}: no slide {slide_id!r} in the store")
        sg = g[slide_id]
        if complete and sg.attrs.get("status") != "complete":
            raise KeyError(f"{self.path}: slide {slide_id!r} is incomplete (rerun wsimm tile)")
        return sg

    def slide_attrs(self, slide_id: str) -> dict[str, Any]:
        """Provenance attributes of a complete slide."""
        return dict(self._slide(slide_id).attrs)

    def coords(self, slide_id: str) -> np.ndarray:
        """``(N, 2)`` int64 level-0 top-left corners."""
        return np.asarray(self._slide(slide_id)["coords"][:])

    def tissue_fraction(self, slide_id: str) -> np.ndarray:
        return np.asarray(self._slide(slide_id)["tissue_fraction"][:])

    def tissue_mask(self, slide_id: str) -> tuple[np.ndarray, float]:
        """The tissue mask and its downsample relative to level 0."""
        a = self._slide(slide_id)["tissue_mask"]
        return np.asarray(a[:]).astype(bool), float(a.attrs["downsample"])

    def encoders(self, slide_id: str) -> list[str]:
        """Encoders whose features are complete for this slide."""
        sg = self._slide(slide_id)
        if "features" not in sg:
            return []
        fg = sg["features"]
        return sorted(k for k in fg.array_keys() if fg[k].attrs.get("complete"))

    def features(self, slide_id: str, encoder: str | None = None) -> np.ndarray:
        """The whole bag ``(N, D)`` float16 in one read. ``encoder`` may be omitted when the
        slide has exactly one."""
        encs = self.encoders(slide_id)
        if encoder is None:
            if len(encs) != 1:
                raise KeyError(
                    f"{self.path}: slide {slide_id!r} has encoders {encs or 'none'}; "
                    "name one with --encoder"
                )
            encoder = encs[0]
        encoder = encoder_id(encoder)
        if encoder not in encs:
            raise KeyError(
                f"{self.path}: slide {slide_id!r} has no {encoder!r} features "
                f"(has {encs or 'none'}); add them with wsimm embed"
            )
        return np.asarray(self._slide(slide_id)["features"][encoder][:])

    def feature_shape(self, slide_id: str, encoder: str) -> tuple[int, int]:
        """``(N, D)`` of a slide's features, without reading them."""
        return tuple(self._slide(slide_id)["features"][encoder_id(encoder)].shape)

    def feature_attrs(self, slide_id: str, encoder: str) -> dict[str, Any]:
        return dict(self._slide(slide_id)["features"][encoder_id(encoder)].attrs)

    # -- writing (used by the pipeline) -------------------------------------------------
    def _require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path}: store opened read-only")

    def begin_slide(
        self,
        slide_id: str,
        *,
        coords: np.ndarray,
        tissue_fraction: np.ndarray,
        tissue_mask: np.ndarray,
        mask_downsample: float,
        attrs: dict[str, Any],
    ) -> None:
        """Create (replacing any partial one) a slide group marked ``writing``."""
        self._require_writable()
        slides = self._root.require_group("slides")
        if slide_id in slides:
            self.delete_slide(slide_id)
        n = len(coords)
        # attributes and data go in with each node's creation: every separate attribute write
        # or array assignment is one more zarr.json round trip (~2 ms each; a store of 300
        # small bags took 24 s, mostly attribute writes one key at a time)
        sg = slides.create_group(slide_id, attributes={**attrs, "status": "writing", "n_tiles": n})
        rows = 4096
        sg.create_array(
            "coords",
            data=np.asarray(coords, np.int64).reshape(n, 2),
            chunks=(max(1, min(n, rows * 16)), 2),
        )
        sg.create_array(
            "tissue_fraction",
            data=np.asarray(tissue_fraction, np.float16).reshape(n),
            chunks=(max(1, min(n, rows * 16)),),
        )
        sg.create_array(
            "tissue_mask",
            data=(
                np.ascontiguousarray(tissue_mask).view(np.uint8)
                if tissue_mask.dtype == np.bool_
                else tissue_mask.astype(np.uint8)
            ),
            # chunked so zarr compresses the pieces concurrently
            chunks=tuple(max(1, min(1024, d)) for d in tissue_mask.shape),
            attributes={"downsample": float(mask_downsample)},
        )

    def begin_features(
        self,
        slide_id: str,
        encoder: str,
        *,
        n: int,
        dim: int,
        attrs: dict[str, Any],
        max_rows: int | None = None,
    ) -> int:
        """Create the ``features/<encoder>`` array; returns its chunk rows (write in
        multiples of it so parallel writers never share a chunk). ``max_rows`` caps the
        chunk rows below the usual ~1 MiB (smaller units of work for a small slide)."""
        self._require_writable()
        sg = self._slide(slide_id, complete=False)
        fg = sg.require_group("features")
        encoder = encoder_id(encoder)
        if encoder in fg:
            del fg[encoder]
        rows = chunk_rows(dim)
        if max_rows is not None:
            rows = max(1, min(rows, int(max_rows)))
        fg.create_array(
            encoder,
            shape=(n, dim),
            dtype="float16",
            chunks=(max(1, min(n, rows)), dim),
            attributes={**attrs, "complete": False},
        )
        return rows

    def write_features(self, slide_id: str, encoder: str, start: int, values: np.ndarray) -> None:
        sg = self._slide(slide_id, complete=False)
        arr = sg["features"][encoder_id(encoder)]
        arr[start : start + len(values)] = values.astype(np.float16)

    def finish_features(self, slide_id: str, encoder: str) -> None:
        sg = self._slide(slide_id, complete=False)
        sg["features"][encoder_id(encoder)].attrs["complete"] = True

    def finish_slide(self, slide_id: str) -> None:
        """Mark the slide complete: the last write, after every array is in place."""
        self._slide(slide_id, complete=False).attrs["status"] = "complete"

    def delete_slide(self, slide_id: str) -> None:
        self._require_writable()
        slides = self._slides_group()
        if slides is not None and slide_id in slides:
            del slides[slide_id]

    # -- lock -----------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock (a lock file holding host and pid). A lock left by a dead
        process on this host is taken over; a live one raises :class:`StoreLockedError`."""
        self._require_writable()
        path = Path(self.path) / ".wsimm.lock"
        me = f"{socket.gethostname()}:{os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = path.read_text().strip() if path.exists() else ""
                host, _, pid = owner.partition(":")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise StoreLockedError(
                    f"{self.path}: another wsimm process ({owner or 'unknown'}) is writing "
                    f"this store; wait for it to finish (or delete {path} if it is gone)"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def discard_if_left_empty(path: str | os.PathLike[str]) -> Iterator[None]:
    """Around work that may create the store at ``path``: if this call created it and, once
    the work ends or fails, it holds no slide at all (not even a partial one) and no other
    writer holds its lock, remove it, so a failed command leaves no empty store behind for
    the next one to misread."""
    import shutil

    p = os.fspath(path)
    created = not os.path.exists(p)
    try:
        yield
    finally:
        if created and os.path.isdir(p) and not os.path.exists(os.path.join(p, ".wsimm.lock")):
            try:
                unused = not open_store(p).all_slide_ids()
            except (OSError, WsimmError):
                unused = False
            if unused:
                shutil.rmtree(p, ignore_errors=True)


def open_store(path: str | os.PathLike[str], mode: str = "r") -> FeatureStore:
    """Open a cohort feature store.

    Parameters
    ----------
    path
        The ``.zarr`` folder.
    mode
        ``"r"`` read (must exist), ``"a"`` read/write (created when missing).

    Raises
    ------
    StoreError
        The store does not exist (``"r"``), or the path is something else.
    StoreFormatError
        The store has another encoding version, or is a Zarr group that is not a wsimm store.
    """
    import zarr

    p = os.fspath(path)
    if mode not in ("r", "a"):
        raise ConfigError(f"store mode must be 'r' or 'a', got {mode!r}")
    exists = os.path.exists(p)
    if exists and not os.path.isdir(p):
        raise StoreError(f"{p}: exists and is not a folder; choose another --store path")
    if not exists and mode == "r":
        raise StoreError(f"{p}: no such feature store; create it with wsimm tile --store {p}")
    if not exists or not any(Path(p).iterdir()):
        if mode == "r":
            raise StoreError(f"{p}: empty folder, not a feature store")
        root = zarr.open_group(p, mode="w", zarr_format=3)
        root.attrs["wsimm"] = {
            "encoding-type": ENCODING_TYPE,
            "encoding-version": ENCODING_VERSION,
            "created_by": f"wsimm {__version__}",
        }
        root.require_group("slides")
        return FeatureStore(root, p, mode=mode)
    try:
        root = zarr.open_group(p, mode="r" if mode == "r" else "r+")
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else ""
        raise StoreFormatError(
            f"{p}: a folder that is not a Zarr store ({type(e).__name__}: {why}); choose "
            "another --store path (a damaged wsimm store: re-tile into a new one)"
        ) from e
    meta = root.attrs.get("wsimm")
    if not isinstance(meta, dict) or meta.get("encoding-type") != ENCODING_TYPE:
        raise StoreFormatError(
            f"{p}: a Zarr group but not a wsimm feature store; choose another --store path "
            "(wsimm does not write into other tools' stores)"
        )
    ver = meta.get("encoding-version")
    if ver != ENCODING_VERSION:
        raise StoreFormatError(
            f"{p}: store format version {ver} (written by {meta.get('created_by', '?')}), "
            f"this wsimm {__version__} reads version {ENCODING_VERSION}; use a matching wsimm "
            "or re-tile into a new store"
        )
    return FeatureStore(root, p, mode=mode)
