"""CLAM/TRIDENT-style h5 interchange: ``coords`` (with ``patch_size`` / ``patch_level``
attrs) and ``features`` per slide."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsimm.errors import ConfigError, MissingDependencyError, StoreError

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
    ``patch_size_level0``, ``mpp``; and ``features`` (N, D) float32 when the slide has
    features for ``encoder``."""
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
    """Bring CLAM/TRIDENT h5 files (``coords`` + ``features``) into a store as complete
    slides with features under ``encoder``; returns the slide ids written."""
    from wsimm.store._store import open_store, sanitize_slide_id

    h5py = _h5py()
    files = sorted(Path(directory).glob("*.h5"))
    if not files:
        raise ConfigError(f"{directory}: no .h5 files to import")
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
            if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
                raise StoreError(
                    f"{p}: coords {coords.shape} and features {feats.shape} do not match"
                )
            fs.begin_slide(
                sid,
                coords=coords,
                tissue_fraction=np.full(len(coords), np.nan, np.float16),
                tissue_mask=np.zeros((1, 1), np.uint8),
                mask_downsample=0.0,
                attrs={
                    "source": str(p),
                    "imported_from": "h5",
                    "tile_px": int(cattrs.get("patch_size", 0) or 0),
                    "read_level": int(cattrs.get("patch_level", 0) or 0),
                    "h5_attrs": cattrs,
                },
            )
            fs.begin_features(
                sid, encoder, n=len(feats), dim=feats.shape[1], attrs={"encoder": encoder}
            )
            fs.write_features(sid, encoder, 0, feats)
            fs.finish_features(sid, encoder)
            fs.finish_slide(sid)
            done.append(sid)
    return done


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
