"""CLAM/TRIDENT-style h5 interchange: ``coords`` (with ``patch_size`` / ``patch_level``
attrs) and ``features`` per slide."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from wsimm.errors import ConfigError, MissingDependencyError, StoreError, WsimmWarning

__all__ = ["export_h5", "import_h5"]


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - environment dependent
        raise MissingDependencyError("h5py", extra="h5", feature="h5 export/import") from e
    return h5py


def export_h5(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    slides: list[str] | None = None,
) -> list[Path]:
    """Write one ``<slide_id>.h5`` per complete slide: ``coords`` (N, 2) int64 level-0
    top-left with attrs ``patch_size`` (target px), ``patch_level`` (read level),
    ``patch_size_level0``, ``mpp``, and TRIDENT's ``level0_width`` / ``level0_height``,
    ``level0_magnification`` / ``target_magnification`` (10 / µm/px) and ``overlap`` (px);
    and ``features`` (N, D) float32 when the slide has features for ``encoder``."""
    from wsimm.store._store import open_store

    h5py = _h5py()
    fs = open_store(store, "r")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sid in slides or fs.slides():
        a = fs.slide_attrs(sid)
        coords = fs.coords(sid)
        target = out_dir / f"{sid}.h5"
        tmp = target.with_suffix(".h5.partial")
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("coords", data=coords)
            d.attrs["patch_size"] = int(a.get("tile_px", 0))
            d.attrs["patch_level"] = int(a.get("read_level", 0))
            d.attrs["patch_size_level0"] = round(float(a.get("tile_size0", 0)))
            d.attrs["mpp"] = float(a.get("target_mpp", 0.0))
            d.attrs["level0_mpp"] = float(a.get("mpp", 0.0))
            d.attrs["wsimm_slide_id"] = sid
            # TRIDENT's names for the same geometry
            dims = a.get("level0_dims") or [0, 0]
            d.attrs["level0_width"], d.attrs["level0_height"] = int(dims[0]), int(dims[1])
            mpp0, tmpp = float(a.get("mpp", 0.0) or 0.0), float(a.get("target_mpp", 0.0) or 0.0)
            d.attrs["level0_magnification"] = 10.0 / mpp0 if mpp0 else 0.0
            d.attrs["target_magnification"] = 10.0 / tmpp if tmpp else 0.0
            size0, stride0 = float(a.get("tile_size0", 0) or 0), float(a.get("stride0", 0) or 0)
            d.attrs["overlap"] = (
                round(max(0.0, size0 - stride0) * a.get("tile_px", 0) / size0) if size0 else 0
            )
            encs = fs.encoders(sid)
            enc = encoder or (encs[0] if len(encs) == 1 else None)
            if encoder and encoder not in encs:
                raise StoreError(
                    f"{fs.path}: slide {sid!r} has no {encoder!r} features (has {encs})"
                )
            if enc is not None:
                fd = f.create_dataset("features", data=fs.features(sid, enc).astype(np.float32))
                fd.attrs["encoder"] = enc
        os.replace(tmp, target)
        written.append(target)
    return written


def import_h5(
    directory: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    encoder: str,
    overwrite: bool = False,
) -> list[str]:
    """Bring CLAM/TRIDENT h5 files (``coords`` + ``features``; ``directory`` is a folder of
    them or one file) into a store as complete slides with features under ``encoder``, with
    the tile geometry :func:`h5_geometry` recovers; returns the slide ids written. Files
    without tiles are skipped with a warning."""
    from wsimm.store._store import open_store, sanitize_slide_id

    h5py = _h5py()
    src = Path(directory)
    files = [src] if src.is_file() else sorted(src.glob("*.h5"))
    if not files:
        raise ConfigError(
            f"{directory}: no .h5 files to import (give a folder of them or one file)"
        )
    fs = open_store(store, "a")
    done = []
    with fs.lock():
        for p in files:
            sid = sanitize_slide_id(p.stem)
            if sid in fs and not overwrite:
                raise StoreError(
                    f"{fs.path}: slide {sid!r} already exists; pass --overwrite to replace it"
                )
            try:
                with h5py.File(p, "r") as f:
                    if "coords" not in f or "features" not in f:
                        raise StoreError(f"{p}: needs 'coords' and 'features' datasets")
                    coords = np.asarray(f["coords"][:], np.int64)
                    feats = np.asarray(f["features"][:])
                    cattrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
            except OSError as e:
                raise StoreError(f"{p}: not a readable h5 file ({e})") from e
            if feats.ndim == 3 and feats.shape[0] == 1:  # some tools keep a batch axis
                feats = feats[0]
            if len(coords) == 0:
                warnings.warn(f"{p}: no tiles (an empty slide?); not imported", WsimmWarning, 2)
                continue
            if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
                raise StoreError(
                    f"{p}: coords {coords.shape} and features {feats.shape} do not match"
                )
            geom = h5_geometry(coords, cattrs)
            fs.begin_slide(
                sid,
                coords=coords,
                tissue_fraction=np.full(len(coords), np.nan, np.float16),
                # tissue unknown: a one-pixel mask over the whole slide, so heatmaps show
                # every tile (a zero mask made them transparent)
                tissue_mask=np.ones((1, 1), np.uint8),
                mask_downsample=float(max(geom["level0_dims"])),
                attrs={"source": str(p), "imported_from": "h5", "h5_attrs": cattrs, **geom},
            )
            fs.begin_features(
                sid, encoder, n=len(feats), dim=feats.shape[1], attrs={"encoder": encoder}
            )
            fs.write_features(sid, encoder, 0, feats)
            fs.finish_features(sid, encoder)
            fs.finish_slide(sid)
            done.append(sid)
    return done


def h5_geometry(coords: np.ndarray, attrs: dict) -> dict:
    """Tile geometry of an h5 file from its ``coords`` attributes (CLAM: ``patch_size``,
    ``patch_level``, ``downsample``; TRIDENT: ``patch_size_level0``, ``level0_width`` /
    ``level0_height``, ``level0_magnification``, ``target_magnification``; wsimm's export:
    ``mpp``, ``level0_mpp``) and the coordinate grid itself.

    ``tile_size0``: ``patch_size_level0``, else ``patch_size`` times the level's downsample,
    else ``patch_size`` at level 0, else the grid's step. ``stride0``: the grid's step (the
    smallest gap between distinct x, or y, coordinates), else the tile size. µm/px at level 0
    from ``level0_mpp`` or 10 / ``level0_magnification`` (40x = 0.25 µm/px); 0 when unknown.
    """

    def num(key: str) -> float:
        v = attrs.get(key)
        try:
            v = float(v[0] if isinstance(v, list | tuple) else v)
        except (TypeError, ValueError, IndexError):
            return 0.0
        return v if np.isfinite(v) and v > 0 else 0.0

    steps = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        if len(u) > 1:
            steps.append(float(np.diff(u).min()))
    grid = min(steps) if steps else 0.0
    level = int(num("patch_level"))
    patch = num("patch_size")
    size0 = num("patch_size_level0")
    if not size0 and patch and num("downsample"):
        size0 = patch * num("downsample")
    if not size0 and patch and level == 0:
        size0 = patch
    size0 = size0 or grid or 256.0
    stride0 = grid or size0
    mpp0 = num("level0_mpp") or (
        10.0 / num("level0_magnification") if num("level0_magnification") else 0.0
    )
    width = num("level0_width") or float(coords[:, 0].max() + size0)
    height = num("level0_height") or float(coords[:, 1].max() + size0)
    tile_px = int(patch) if patch else round(size0)
    return {
        "tile_px": tile_px,
        "stride_px": round(stride0 * tile_px / size0),
        "read_level": level,
        "tile_size0": float(size0),
        "stride0": float(stride0),
        "mpp": mpp0,
        "target_mpp": mpp0 * size0 / tile_px if mpp0 else (num("mpp") or 0.0),
        "level0_dims": [round(width), round(height)],
    }


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
