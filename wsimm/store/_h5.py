"""CLAM/TRIDENT-style h5 interchange: ``coords`` (with ``patch_size`` / ``patch_level``
attrs) and ``features`` per slide."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from wsimm._progress import progress
from wsimm.errors import ConfigError, MissingDependencyError, StoreError, WsimmWarning

__all__ = ["export_h5", "import_h5"]


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - environment dependent
        raise MissingDependencyError("h5py", extra="h5", feature="h5 export/import") from e
    return h5py


#: ``export_h5`` layouts: wsimm's flat folder, and each peer's own tree and attribute meanings
LAYOUTS = ("wsimm", "clam", "trident", "stamp")


def _coords_attrs(sid: str, a: dict) -> dict:
    """The tile geometry under every name the peers read: ``patch_size`` (target px, TRIDENT's
    meaning), ``patch_level``, ``patch_size_level0``, ``mpp`` / ``level0_mpp``, TRIDENT's
    ``level0_width`` / ``level0_height``, ``level0_magnification`` / ``target_magnification``
    (10 / µm/px) and ``overlap`` (target px)."""
    dims = a.get("level0_dims") or [0, 0]
    mpp0, tmpp = float(a.get("mpp", 0.0) or 0.0), float(a.get("target_mpp", 0.0) or 0.0)
    size0, stride0 = float(a.get("tile_size0", 0) or 0), float(a.get("stride0", 0) or 0)
    tile_px = int(a.get("tile_px", 0))
    return {
        "patch_size": tile_px,
        "patch_level": int(a.get("read_level", 0)),
        "patch_size_level0": round(size0),
        "mpp": tmpp,
        "level0_mpp": mpp0,
        "wsimm_slide_id": sid,
        "level0_width": int(dims[0]),
        "level0_height": int(dims[1]),
        "level0_magnification": 10.0 / mpp0 if mpp0 else 0.0,
        "target_magnification": 10.0 / tmpp if tmpp else 0.0,
        "overlap": round(max(0.0, size0 - stride0) * tile_px / size0) if size0 else 0,
        "name": sid,
    }


def _clam_attrs(sid: str, a: dict, save_path: Path) -> dict:
    """CLAM's meanings: ``patch_size`` is the tile's side in pixels of ``patch_level`` (what
    its heatmap code multiplies by ``downsample`` to reach level 0), ``downsample`` and
    ``level_dim`` / ``downsampled_level_dim`` of that level."""
    from wsimm.store._store import read_downsample

    ds = read_downsample(a)
    dims = a.get("level0_dims") or [0, 0]
    level_dim = [round(int(dims[0]) / ds), round(int(dims[1]) / ds)]
    return {
        **_coords_attrs(sid, a),
        "patch_size": round(float(a.get("tile_size0", 0) or 0) / ds),
        "downsample": [ds, ds],
        "downsampled_level_dim": level_dim,
        "level_dim": level_dim,
        "save_path": str(save_path),
    }


def _write_h5(target: Path, datasets: dict, coords_attrs: dict, root_attrs: dict | None = None):
    """One h5 file, written under a temporary name and renamed (never half-written)."""
    h5py = _h5py()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for name, data in datasets.items():
            d = f.create_dataset(name, data=data)
            if name == "coords":
                for k, v in coords_attrs.items():
                    d.attrs[k] = v
        for k, v in (root_attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, target)
    return target


def export_h5(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    encoder: str | None = None,
    slides: list[str] | None = None,
    layout: str = "wsimm",
    quiet: bool = False,
) -> list[Path]:
    """Write each complete slide's tiles and features as h5 files other tools read.

    ``layout``:

    - ``"wsimm"``: ``OUT/<slide>.h5`` with ``coords`` (N, 2) int64 level-0 top-left corners,
      carrying the geometry under every name the peers read (see :func:`_coords_attrs`;
      ``patch_size`` in TRIDENT's meaning, target pixels), and ``features`` (N, D) float32
      when the slide has features for ``encoder``.
    - ``"clam"``: CLAM's tree: ``OUT/patches/<slide>.h5`` (coords), ``OUT/h5_files/<slide>.h5``
      (features + coords) and ``OUT/pt_files/<slide>.pt`` (the features as a torch tensor, for
      CLAM's training without h5), with CLAM's attribute meanings (``patch_size`` in pixels of
      ``patch_level``, ``downsample``, ``level_dim``).
    - ``"trident"``: TRIDENT's tree: ``OUT/<mag>x_<px>px_<overlap>px_overlap/patches/
      <slide>_patches.h5`` and ``.../features_<encoder>/<slide>.h5``.
    - ``"stamp"``: STAMP's files: ``OUT/<slide>.h5`` with ``feats`` and ``coords`` in µm
      (``unit = "um"``, ``tile_size_um``, ``tile_size_px``, ``extractor``).

    Returns the files written.
    """
    from wsimm.store._store import open_store

    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _h5py()
    fs = open_store(store, "r")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ids = slides or fs.slides()
    with progress(quiet=quiet) as bar:
        task = bar.add_task("export-h5", total=len(ids), rate="")
        for sid in ids:
            written += _export_slide(fs, sid, out_dir, encoder, layout)
            bar.advance(task)
    return written


def _export_slide(fs: Any, sid: str, out_dir: Path, encoder: str | None, layout: str) -> list[Path]:
    """One slide's files in ``layout``."""
    written: list[Path] = []
    a = fs.slide_attrs(sid)
    coords = fs.coords(sid)
    encs = fs.encoders(sid)
    if encoder and encoder not in encs:
        raise StoreError(f"{fs.path}: slide {sid!r} has no {encoder!r} features (has {encs})")
    enc = encoder or (encs[0] if len(encs) == 1 else None)
    if enc is None and layout != "wsimm":
        raise StoreError(
            f"{fs.path}: slide {sid!r} has {encs if encs else 'no features'}; "
            f"--layout {layout} needs one encoder's features (pass --encoder)"
        )
    feats = fs.features(sid, enc).astype(np.float32) if enc is not None else None
    attrs = _coords_attrs(sid, a)
    if layout == "wsimm":
        data = {"coords": coords, **({"features": feats} if feats is not None else {})}
        written.append(_write_h5(out_dir / f"{sid}.h5", data, attrs))
        if feats is not None:
            _tag_encoder(written[-1], enc)
    elif layout == "clam":
        cattrs = _clam_attrs(sid, a, out_dir / "patches")
        written.append(_write_h5(out_dir / "patches" / f"{sid}.h5", {"coords": coords},
                                 cattrs))  # fmt: skip
        written.append(_write_h5(out_dir / "h5_files" / f"{sid}.h5",
                                 {"features": feats, "coords": coords}, cattrs))  # fmt: skip
        written.append(_write_pt(out_dir / "pt_files" / f"{sid}.pt", feats))
    elif layout == "trident":
        mag = attrs["target_magnification"]
        run = out_dir / f"{mag:g}x_{attrs['patch_size']}px_{attrs['overlap']}px_overlap"
        written.append(_write_h5(run / "patches" / f"{sid}_patches.h5", {"coords": coords},
                                 attrs))  # fmt: skip
        written.append(_write_h5(run / f"features_{enc}" / f"{sid}.h5",
                                 {"features": feats, "coords": coords}, attrs))  # fmt: skip
    else:  # stamp
        mpp0 = float(a.get("mpp", 0.0) or 0.0)
        if not mpp0:
            raise StoreError(
                f"{fs.path}: slide {sid!r} has no µm/px; STAMP files need coordinates in µm"
            )
        size_um = float(a["tile_size0"]) * mpp0
        root = {"unit": "um", "tile_size_um": size_um, "tile_size_px": int(a["tile_px"]),
                "extractor": str(enc), "feat_type": "tile", "wsimm_slide_id": sid}  # fmt: skip
        data = {"feats": feats, "coords": (coords * mpp0).astype(np.float32)}
        written.append(_write_h5(out_dir / f"{sid}.h5", data, {}, root))
    return written


def _tag_encoder(path: Path, enc: str) -> None:
    with _h5py().File(path, "a") as f:
        f["features"].attrs["encoder"] = enc


def _write_pt(target: Path, feats: np.ndarray) -> Path:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - environment dependent
        raise MissingDependencyError("torch", extra="torch", feature="--layout clam") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    torch.save(torch.from_numpy(np.ascontiguousarray(feats)), tmp)
    os.replace(tmp, target)
    return target


def import_h5(
    directory: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    encoder: str,
    overwrite: bool = False,
    slides_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> list[str]:
    """Bring h5 feature files into a store as complete slides with features under ``encoder``
    (``directory`` is a folder of them or one file); returns the slide ids written.

    Read: CLAM / TRIDENT / wsimm files (``coords`` + ``features``, level-0 pixel corners, the
    geometry from :func:`h5_geometry`) and STAMP files (``feats`` + ``coords`` in µm, or
    STAMP 1's 256 µm / 224 px units). ``slides_dir``: where the slide files are (matched by
    file name without extension): an imported slide found there is attached (heatmaps and
    views draw on it) and gives the µm/px and size the h5 file lacks; STAMP files need it to
    turn µm into pixels. Files without tiles are skipped with a warning."""
    from wsimm.store._store import discard_if_left_empty

    with discard_if_left_empty(store):  # a file refused: no empty store left behind
        return _import_files(directory, store, encoder, overwrite, slides_dir, quiet)


def _import_files(directory, store, encoder, overwrite, slides_dir, quiet) -> list[str]:
    from wsimm.store._store import open_store, sanitize_slide_id

    h5py = _h5py()
    src = Path(directory)
    files = [src] if src.is_file() else sorted(src.glob("*.h5"))
    if not files:
        raise ConfigError(
            f"{directory}: no .h5 files to import (give a folder of them or one file)"
        )
    slide_files = _slide_files(slides_dir)
    fs = open_store(store, "a")
    done = []
    with fs.lock(), progress(quiet=quiet) as bar:
        task = bar.add_task("import-h5", total=len(files), rate="")
        for p in files:
            bar.advance(task)
            sid = sanitize_slide_id(p.stem)
            if sid in fs and not overwrite:
                raise StoreError(
                    f"{fs.path}: slide {sid!r} already exists; pass --overwrite to replace it"
                )
            try:
                with h5py.File(p, "r") as f:
                    key = "features" if "features" in f else "feats" if "feats" in f else None
                    names_key = next((k for k in _NAME_KEYS if k in f), None)
                    if key is None or ("coords" not in f and names_key is None):
                        raise StoreError(
                            f"{p}: needs 'features' (CLAM, TRIDENT) or 'feats' (STAMP) and a "
                            "'coords' dataset (or tile file names in 'metadata')"
                        )
                    feats = np.asarray(f[key][:])
                    rattrs = {k: _plain(v) for k, v in f.attrs.items()}
                    if "coords" in f:
                        coords = np.asarray(f["coords"][:], np.float64)
                        cattrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
                    else:
                        names = [_plain(v) for v in np.asarray(f[names_key][:]).ravel()]
                        coords, cattrs = None, {**rattrs}
            except StoreError:
                raise
            except OSError as e:
                raise StoreError(f"{p}: not a readable h5 file ({e})") from e
            if not any(k in cattrs for k in ("patch_size", "patch_size_level0")):
                cattrs = {**_sibling_patch_attrs(p, h5py), **cattrs}
            um = key == "feats" or rattrs.get("unit") == "um" or "tile_size_um" in rattrs
            if coords is None:
                coords = _coords_from_names(p, names, names_key, cattrs, um)
            if feats.ndim == 3 and feats.shape[0] == 1:  # some tools keep a batch axis
                feats = feats[0]
            if len(coords) == 0:
                warnings.warn(f"{p}: no tiles (an empty slide?); not imported", WsimmWarning, 2)
                continue
            if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
                raise StoreError(
                    f"{p}: coords {coords.shape} and features {feats.shape} do not match"
                )
            slide = slide_files.get(p.stem) or slide_files.get(sid)
            info = _slide_info(slide) if slide else {}
            if um:  # STAMP: micrometres
                coords, cattrs = _stamp_to_pixels(p, coords, rattrs, info)
            coords = np.round(coords).astype(np.int64)
            for k in ("level0_width", "level0_height"):
                if k in info and not cattrs.get(k):
                    cattrs[k] = info[k]
            if info.get("level0_mpp") and not cattrs.get("level0_mpp"):
                cattrs["level0_mpp"] = info["level0_mpp"]
            geom = h5_geometry(coords, cattrs)
            if info.get("level_downsamples"):
                # the attached slide's pyramid: read from the level wsimm's tiler would
                # (STAMP and TRIDENT files name no level; CLAM's patch_level is the same one)
                from wsimm.tiling import best_level

                lds = info["level_downsamples"]
                lv = best_level(tuple(lds), geom["tile_size0"] / geom["tile_px"])
                geom["read_level"], geom["read_downsample"] = lv, lds[lv]
            fs.begin_slide(
                sid,
                coords=coords,
                tissue_fraction=np.full(len(coords), np.nan, np.float16),
                # tissue unknown: a one-pixel mask over the whole slide, so heatmaps show
                # every tile (a zero mask made them transparent)
                tissue_mask=np.ones((1, 1), np.uint8),
                mask_downsample=float(max(geom["level0_dims"])),
                attrs={
                    "source": str(slide or p),
                    "h5_file": str(p),
                    "imported_from": "h5",
                    "h5_attrs": {**rattrs, **cattrs},
                    **geom,
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


_NAME_KEYS = ("metadata", "tile_names", "filenames")


def _coords_from_names(p: Path, names: list, names_key: str, attrs: dict, um: bool) -> np.ndarray:
    """Tile positions from tile file names (KatherLab-style files keep e.g. ``0_0_1_506.jpg``
    in ``metadata`` instead of ``coords``): the last two numbers of each name are x, y. Grid
    indices (neighbouring tiles one apart on both axes) are scaled by the file's tile size
    (``tile_size_um``, ``patch_size_level0`` or ``patch_size``); other numbers are taken as
    pixels (µm in STAMP-style files). The reading is announced as a warning."""
    import re

    if not names:
        return np.zeros((0, 2))
    nums = [re.findall(r"\d+", Path(str(n)).stem) for n in names]
    bad = next((n for n, v in zip(names, nums, strict=True) if len(v) < 2), None)
    if bad is not None:
        raise StoreError(
            f"{p}: tile name {bad!r} in {names_key!r} holds no x, y numbers; write a 'coords' "
            "dataset (level-0 pixels, one row per feature row) instead"
        )
    xy = np.array([[float(v[-2]), float(v[-1])] for v in nums])
    steps = [np.diff(np.unique(xy[:, a])) for a in (0, 1)]
    unit = "µm" if um else "level-0 px"
    if any(len(s) for s in steps) and all(not len(s) or s.min() == 1 for s in steps):
        size = attrs.get("tile_size_um") if um else None
        size = (
            size
            or attrs.get("patch_size_level0")
            or (attrs.get("patch_size") if not attrs.get("patch_level") else None)
        )
        if not size:
            raise StoreError(
                f"{p}: tile names in {names_key!r} (e.g. {names[0]!r}) give grid positions but "
                "the file records no tile size (tile_size_um, patch_size_level0 or patch_size)"
            )
        xy = xy * float(size)
        how = f"grid indices x {float(size):g} {unit}"
    else:
        how = unit
    warnings.warn(
        f"{p}: no 'coords'; tile positions read from the names in {names_key!r} (last two "
        f"numbers as x, y; {how}), e.g. {names[0]!r} -> {xy[0].tolist()}",
        WsimmWarning,
        3,
    )
    return xy


def _sibling_patch_attrs(p: Path, h5py) -> dict:
    """The tiling attributes of a feature file that carries none, from the coordinates file
    beside it in the peer's tree: CLAM's ``extract_features_fp.py`` writes ``h5_files/<slide>.h5``
    without attributes next to ``patches/<slide>.h5``; TRIDENT keeps
    ``patches/<slide>_patches.h5`` beside ``features_<encoder>/``."""
    for c in (p.parent.parent / "patches" / p.name,
              p.parent.parent / "patches" / f"{p.stem}_patches.h5"):  # fmt: skip
        if c.is_file():
            try:
                with h5py.File(c, "r") as f:
                    return {k: _plain(v) for k, v in f["coords"].attrs.items()}
            except (OSError, KeyError):
                return {}
    return {}


def _slide_files(slides_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """Slide files in ``slides_dir`` by file name without extension."""
    if slides_dir is None:
        return {}
    from wsimm.slide import find_slides

    return {Path(s).stem: s for s in find_slides([slides_dir])}


def _slide_info(path: str) -> dict:
    from wsimm.slide import open_slide

    with open_slide(path) as s:
        w, h = s.dimensions
        return {
            "level0_width": int(w),
            "level0_height": int(h),
            "level0_mpp": s.mpp or 0.0,
            "level_downsamples": [float(d) for d in s.level_downsamples],
        }


def _stamp_to_pixels(
    p: Path, coords_um: np.ndarray, rattrs: dict, info: dict
) -> tuple[np.ndarray, dict]:
    """STAMP coordinates (µm; STAMP 1: 256 µm per 224 px) as level-0 pixels, with CLAM /
    TRIDENT-style attributes for :func:`h5_geometry`."""
    size_um = rattrs.get("tile_size_um") or (
        rattrs.get("tile_size") if rattrs.get("unit") == "um" else None
    )
    size_px = rattrs.get("tile_size_px")
    if not size_um:  # STAMP 1: a 224 px grid standing for 256 µm tiles
        coords_um = coords_um / 224.0 * 256.0
        size_um, size_px = 256.0, size_px or 224
    mpp0 = float(info.get("level0_mpp") or 0.0)
    if not mpp0:
        raise StoreError(
            f"{p}: STAMP files give tile positions in µm; pass --slides-dir with the slide "
            f"{p.stem}.* (its µm/px turns them into pixels)"
        )
    size0 = float(size_um) / mpp0
    px = int(size_px) if size_px else round(size0)
    return coords_um / mpp0, {"patch_size": px, "patch_size_level0": size0, "level0_mpp": mpp0}


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
    # the level's downsample: CLAM's ``downsample``, else level 0's 1, else the footprint over
    # the tile's pixels (the slide, when attached, replaces it with its own pyramid's)
    read_ds = num("downsample") or (1.0 if level == 0 else size0 / tile_px)
    return {
        "tile_px": tile_px,
        "stride_px": round(stride0 * tile_px / size0),
        "read_level": level,
        "read_downsample": float(read_ds),
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
