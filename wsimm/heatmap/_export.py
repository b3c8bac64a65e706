"""Heatmap files a pathologist opens in their own viewer.

Per slide, in the output folder:

- ``<slide>.png``: the heatmap over the slide thumbnail, with colour bar, scale bar and title;
- ``<slide>.tiff``: a pyramidal RGBA TIFF of the heatmap over the slide's full extent with its
  µm/px in the resolution tags (openslide, tiffslide and QuPath open it);
- ``<slide>.geojson``: one QuPath detection per tile (level-0 polygon), the scores as
  ``measurements``, the top and bottom tiles classified;
- ``<slide>_gallery.png``: the top-k and bottom-k tiles with their scores;
- ``<slide>_tiles.csv``: every tile's coordinates and scores.

Every file is written under a temporary name and renamed, so a failed slide leaves no partial
file.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsimm.errors import ConfigError, WsimmError
from wsimm.heatmap._render import (
    DEFAULT_CMAP,
    ScoreField,
    colorize,
    smooth_scores,
    write_overlay_tiff,
)
from wsimm.heatmap._scores import TileScores, fold_position, tile_scores

__all__ = [
    "FORMATS",
    "HeatmapReport",
    "export",
    "make_heatmaps",
    "parse_formats",
    "render",
]

FORMATS = ("png", "tiff", "geojson", "gallery")
SCALES = ("auto", "percentile", "signed", "raw")
_TOP = {"name": "wsimm top", "color": [214, 39, 40]}
_BOTTOM = {"name": "wsimm bottom", "color": [31, 119, 180]}


def parse_formats(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"png,tiff"`` -> ``("png", "tiff")``; ``None`` or ``"all"`` -> every format."""
    if spec is None:
        return FORMATS
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if items == ["all"]:
        return FORMATS
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise ConfigError(f"--format {','.join(items)}: choose from {','.join(FORMATS)} (or all)")
    return tuple(dict.fromkeys(items))


def _atomic(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


@dataclass
class _View:
    """What to draw: the score's values mapped for display, its range and colour map."""

    name: str
    values: np.ndarray
    vmin: float
    vmax: float
    cmap: str
    label: str


def _view(ts: TileScores, score: str | None, scale: str, smooth: float, cmap: str | None) -> _View:
    _check_scale(scale)
    name = score or ts.primary
    if name not in ts.scores:
        why = ""
        if name == "cross" or name.startswith("cross_"):
            why = (
                " (the model that scores this slide has no slide x omics terms: fusion_kwargs "
                "cross is off, or its fold chose cross_prototypes none)"
            )
        raise ConfigError(
            f"no score {name!r} for {ts.slide_id}{why}; choose from {', '.join(ts.scores)}"
        )
    v = smooth_scores(ts.coords, ts.stride0, ts.scores[name], smooth)
    if scale == "auto":
        scale = "signed" if name == "contribution" else "percentile"
    if scale == "percentile":
        from scipy.stats import rankdata

        pct = rankdata(v, method="average") / max(len(v), 1)
        return _View(name, pct, 0.0, 1.0, cmap or DEFAULT_CMAP, f"{name} (percentile within slide)")
    if scale == "signed":
        m = float(np.quantile(np.abs(v), 0.99)) if len(v) else 1.0
        m = m if m > 0 else 1.0
        return _View(name, v, -m, m, cmap or "RdBu_r", f"{name} (red raises, blue lowers)")
    lo, hi = np.quantile(v, [0.01, 0.99]) if len(v) else (0.0, 1.0)  # raw
    return _View(name, v, float(lo), float(hi) if hi > lo else float(lo) + 1.0,
                 cmap or DEFAULT_CMAP, name)  # fmt: skip


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")


def _field(ts: TileScores, view: _View) -> ScoreField:
    return ScoreField(
        ts.coords,
        ts.tile_size0,
        view.values,
        tissue=ts.tissue_mask,
        tissue_downsample=ts.mask_downsample,
    )


def render(
    ts: TileScores,
    *,
    downsample: float | None = None,
    max_px: int = 2048,
    score: str | None = None,
    scale: str = "auto",
    smooth: float = 0.0,
    cmap: str | None = None,
) -> np.ndarray:
    """The heatmap of the whole slide as an ``(h, w, 4)`` RGBA array (transparent off
    tissue), at ``downsample`` level-0 pixels per pixel or, by default, with its long side
    ``max_px``. For images too big for memory, :func:`export` writes the pyramidal TIFF tile
    by tile."""
    view = _view(ts, score, scale, smooth, cmap)
    ds = float(downsample or max(ts.dims) / max_px)
    w, h = math.ceil(ts.dims[0] / ds), math.ceil(ts.dims[1] / ds)
    values = _field(ts, view).region(0, 0, w, h, ds)
    return colorize(values, vmin=view.vmin, vmax=view.vmax, cmap=view.cmap)


# ------------------------------------------------------------------------------------------
def _tissue_box(ts: TileScores) -> tuple[float, float, float, float]:
    """Level-0 box around the scored tiles with a margin; the whole slide when the tiles
    cover most of it."""
    w0, h0 = ts.dims
    if len(ts) == 0:
        return 0.0, 0.0, float(w0), float(h0)
    lo = ts.coords.min(0).astype(np.float64)
    hi = ts.coords.max(0).astype(np.float64) + ts.tile_size0
    m = max(0.05 * float((hi - lo).max()), 2 * ts.tile_size0)
    x0, y0 = max(0.0, lo[0] - m), max(0.0, lo[1] - m)
    x1, y1 = min(float(w0), hi[0] + m), min(float(h0), hi[1] + m)
    if (x1 - x0) * (y1 - y0) > 0.6 * w0 * h0:
        return 0.0, 0.0, float(w0), float(h0)
    return x0, y0, x1, y1


def _read_box(
    slide: Any, box: tuple[float, float, float, float], ds: float, strip_pixels: int = 1 << 24
) -> np.ndarray:
    """RGB of a level-0 box at downsample ``ds``, from the best pyramid level, read in
    horizontal strips so memory stays at the output plus one strip (slides without a
    pyramid too)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    ow, oh = max(1, round((x1 - x0) / ds)), max(1, round((y1 - y0) / ds))
    level = slide.get_best_level_for_downsample(max(ds, 1.0))
    lds = float(slide.level_downsamples[level])
    level_h = int(slide.level_dimensions[level][1])
    lw = (x1 - x0) / lds
    ly0, sy = y0 / lds, (y1 - y0) / lds / oh  # level rows per output row
    read_w = max(1, math.ceil(lw))
    resample = Image.Resampling.BILINEAR if ow > lw else Image.Resampling.BOX
    out = np.empty((oh, ow, 3), np.uint8)
    step = max(1, int(max(1, strip_pixels // read_w) / max(sy, 1e-9)))
    for r0 in range(0, oh, step):
        r1 = min(oh, r0 + step)
        fy0, fy1 = ly0 + r0 * sy, ly0 + r1 * sy
        iy0 = max(0, math.floor(fy0))
        iy1 = max(iy0 + 1, min(level_h, math.ceil(fy1)))
        strip = np.asarray(
            slide.read_region((int(x0), round(iy0 * lds)), level, (read_w, iy1 - iy0))
        )[..., :3]
        img = Image.fromarray(np.ascontiguousarray(strip))
        out[r0:r1] = np.asarray(
            img.resize((ow, r1 - r0), resample, box=(0.0, fy0 - iy0, lw, fy1 - iy0))
        )
    return out


def write_png(
    ts: TileScores,
    view: _View,
    path: Path,
    slide: Any,
    *,
    alpha: float = 0.5,
    max_px: int = 2048,
) -> Path:
    """Heatmap blended over the slide, cropped to the scored tissue (with a margin), the long
    side ``max_px``; with colour bar, scale bar and title."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from PIL import Image

    x0, y0, x1, y1 = _tissue_box(ts)
    extent = max(x1 - x0, y1 - y0)
    # the long side is max_px; a small piece of tissue is enlarged to at least 800 px
    ds = max(extent / max_px, min(1.0, extent / min(800, max_px)))
    thumb = _read_box(slide, (x0, y0, x1, y1), ds)
    th, tw = thumb.shape[:2]
    rgba = colorize(
        _field(ts, view).region(x0, y0, tw, th, ds), vmin=view.vmin, vmax=view.vmax, cmap=view.cmap
    )
    a = rgba[..., 3:4].astype(np.float32) / 255.0 * alpha
    blend = (thumb * (1 - a) + rgba[..., :3] * a).round().astype(np.uint8)
    dpi = 100
    fig = Figure(figsize=(tw / dpi + 1.5, th / dpi + 0.7), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)  # matplotlib draws only the annotations; the image is pasted
    ax = fig.add_axes((0.0, 0.0, tw / (tw + 150), th / (th + 70)))
    ax.set_xlim(-0.5, tw - 0.5)
    ax.set_ylim(th - 0.5, -0.5)
    ax.set_axis_off()
    # scale bar: a round length near a fifth of the width
    um_w = tw * ds * ts.mpp
    nice = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]
    bar_um = max([n for n in nice if n <= um_w / 5] or [nice[0]])
    bar_px = bar_um / (ds * ts.mpp)
    bx, by = tw * 0.03, th * 0.96
    halo = [patheffects.withStroke(linewidth=4, foreground="white")]
    ax.plot([bx, bx + bar_px], [by, by], color="black", linewidth=3, solid_capstyle="butt",
            path_effects=halo)  # fmt: skip
    label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} µm"
    ax.text(bx, by - th * 0.015, label, fontsize=10, color="black", va="bottom",
            path_effects=halo)  # fmt: skip
    fig.text(0.01, 0.995, ts.title(), fontsize=13, va="top")
    cax = fig.add_axes((tw / (tw + 150) + 0.01, 0.1, 20 / (tw + 150), 0.7))
    cb = fig.colorbar(ScalarMappable(Normalize(view.vmin, view.vmax), view.cmap), cax=cax)
    cb.set_label(view.label, fontsize=9)
    canvas.draw()
    # white page, the blended slide in the axes' pixels (bottom-left, th x tw: no matplotlib
    # resampling, which took ~1.5 s per 2,048-px overlay), the annotations over both
    layer = np.asarray(canvas.buffer_rgba())
    page = np.full((*layer.shape[:2], 3), 255, np.uint8)
    page[page.shape[0] - th :, :tw] = blend
    a = layer[..., 3:4].astype(np.float32) / 255.0
    page = (page * (1 - a) + layer[..., :3] * a).round().astype(np.uint8)
    tmp = _atomic(path)
    Image.fromarray(page).save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)
    return path


def write_geojson(ts: TileScores, path: Path, *, primary: str, top_k: int = 10) -> Path:
    """QuPath GeoJSON: a FeatureCollection of tile detections, written one feature at a time.

    Each tile is a level-0 ``Polygon`` with ``objectType: "detection"``, every score and its
    within-slide percentile (0-100) in ``measurements``, and the ``top_k`` highest / lowest tiles of
    ``primary`` classified ``wsimm top`` / ``wsimm bottom``.
    """
    n = len(ts)
    order = np.argsort(ts.scores[primary], kind="stable")
    k = min(top_k, n // 2) if n > 1 else n
    top, bottom = set(order[::-1][:k].tolist()), set(order[:k].tolist())
    pct = {name: ts.percentile(name) for name in ts.scores}
    s = ts.tile_size0
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"wsimm:{ts.slide_id}")
    tmp = _atomic(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i in range(n):
            x, y = float(ts.coords[i, 0]), float(ts.coords[i, 1])
            ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
            meas: dict[str, float] = {}
            for name, v in ts.scores.items():
                meas[name] = float(v[i])
                meas[f"{name} percentile"] = 100.0 * float(pct[name][i])  # QuPath: 0-100
            props: dict[str, Any] = {
                "objectType": "detection",
                "name": f"tile {i}",
                "measurements": meas,
                "isLocked": False,
            }
            if i in top:
                props["classification"] = _TOP
            elif i in bottom:
                props["classification"] = _BOTTOM
            feat = {
                "type": "Feature",
                "id": str(uuid.uuid5(ns, str(i))),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[round(c, 2) for c in p] for p in ring]],
                },
                "properties": props,
            }
            f.write(("," if i else "") + json.dumps(feat, separators=(",", ":")) + "\n")
        f.write("]}\n")
    os.replace(tmp, path)
    return path


def _read_tile_image(slide: Any, x: int, y: int, size0: float, px: int) -> np.ndarray:
    from PIL import Image

    level = slide.get_best_level_for_downsample(size0 / px)
    lds = float(slide.level_downsamples[level])
    n = max(1, math.ceil(size0 / lds))
    region = np.asarray(slide.read_region((int(x), int(y)), level, (n, n)))[..., :3]
    return np.asarray(Image.fromarray(region).resize((px, px), Image.Resampling.BOX))


def write_gallery(
    ts: TileScores, path: Path, slide: Any, *, name: str, top_k: int = 8, px: int = 160
) -> Path:
    """The ``top_k`` highest and lowest scoring tiles of ``name``, with score and percentile."""
    from PIL import Image, ImageDraw, ImageFont

    v = ts.scores[name]
    pct = ts.percentile(name)
    order = np.argsort(v, kind="stable")
    k = max(1, min(top_k, len(v) // 2 if len(v) > 1 else 1))
    rows = [("highest " + name, order[::-1][:k]), ("lowest " + name, order[:k])]
    pad, cap, head = 6, 18, 26
    width = pad + k * (px + pad)
    height = head + len(rows) * (cap + px + cap + pad)
    canvas = Image.new("RGB", (max(width, 420), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((pad, 6), ts.title(), fill=(0, 0, 0), font=font)
    y = head
    for label, idx in rows:
        draw.text((pad, y + 2), label, fill=(0, 0, 0), font=font)
        y += cap
        for j, i in enumerate(idx):
            x = pad + j * (px + pad)
            img = _read_tile_image(slide, ts.coords[i, 0], ts.coords[i, 1], ts.tile_size0, px)
            canvas.paste(Image.fromarray(img), (x, y))
            draw.text(
                (x, y + px + 2), f"{v[i]:.3g} (p{100 * pct[i]:.0f})", fill=(0, 0, 0), font=font
            )
        y += px + cap + pad
    tmp = _atomic(path)
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------
def export(
    ts: TileScores,
    out: str | os.PathLike[str],
    formats: str | Sequence[str] | None = None,
    *,
    score: str | None = None,
    scale: str = "auto",
    smooth: float = 0.0,
    cmap: str | None = None,
    alpha: float = 0.5,
    top_k: int = 8,
    tiff_downsample: float | None = None,
    slides_dir: str | os.PathLike[str] | None = None,
    max_px: int = 2048,
) -> dict[str, Path]:
    """Write the heatmap files of one slide into ``out``; returns format -> path.

    Parameters
    ----------
    score
        Which score to draw (default ``ts.primary``: attention of the predicted class for
        grading, risk contribution for survival).
    scale
        ``percentile`` (rank within the slide, CLAM's convention), ``signed`` (symmetric about
        0 with a diverging map: for risk contributions), ``raw`` (1st-99th percentile), or
        ``auto`` (signed for contributions, else percentile).
    smooth
        Gaussian smoothing of the scores over the tile grid, in tiles (0: none).
    tiff_downsample
        Level-0 pixels per TIFF pixel (default 1: the TIFF's level 0 is the slide's level 0,
        same size and µm/px).
    """
    fmts = parse_formats(formats)
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha} must be in [0, 1]")
    if smooth < 0:
        raise ConfigError(f"--smooth {smooth} must be >= 0")
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    view = _view(ts, score, scale, smooth, cmap)
    files: dict[str, Path] = {}
    stem = ts.slide_id
    slide = None
    if "png" in fmts or "gallery" in fmts:
        from wsimm.pipeline._tile import locate_source
        from wsimm.slide import open_slide

        src = locate_source(
            {"source": ts.source, "fingerprint": ts.fingerprint}, ts.slide_id, slides_dir
        )
        slide = open_slide(src, mpp=ts.mpp)
    try:
        tmp = _atomic(d / f"{stem}_tiles.csv")
        ts.to_frame().to_csv(tmp, index=False)
        os.replace(tmp, d / f"{stem}_tiles.csv")
        files["csv"] = d / f"{stem}_tiles.csv"
        if "png" in fmts:
            files["png"] = write_png(ts, view, d / f"{stem}.png", slide, alpha=alpha, max_px=max_px)
        if "tiff" in fmts:
            ds = 1.0 if tiff_downsample is None else float(tiff_downsample)
            if ds <= 0:
                raise ConfigError(f"--tiff-downsample {ds} must be positive")
            desc = json.dumps(
                {
                    "wsimm": {
                        "slide_id": ts.slide_id,
                        "score": view.name,
                        "scale": view.label,
                        "vmin": view.vmin,
                        "vmax": view.vmax,
                        "cmap": view.cmap,
                        "downsample": ds,
                        "slide_mpp": ts.mpp,
                    }
                }
            )
            write_overlay_tiff(
                _field(ts, view),
                d / f"{stem}.tiff",
                dims=ts.dims,
                mpp=ts.mpp,
                downsample=ds,
                vmin=view.vmin,
                vmax=view.vmax,
                cmap=view.cmap,
                description=desc,
            )
            files["tiff"] = d / f"{stem}.tiff"
        if "geojson" in fmts:
            files["geojson"] = write_geojson(ts, d / f"{stem}.geojson", primary=view.name,
                                             top_k=top_k)  # fmt: skip
        if "gallery" in fmts:
            files["gallery"] = write_gallery(ts, d / f"{stem}_gallery.png", slide, name=view.name,
                                             top_k=top_k)  # fmt: skip
    finally:
        if slide is not None:
            slide.close()
    return files


@dataclass
class HeatmapReport:
    """Per slide: ``{"slide_id", "status" (done | failed), "files", "error", "seconds"}``."""

    out: Path
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == "failed"]


def make_heatmaps(
    run: Any,
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    slides: Sequence[str] | None = None,
    formats: str | Sequence[str] | None = None,
    fold: str | int = "auto",
    overlap: float = 0.0,
    device: str = "auto",
    weights: str | None = None,
    slides_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    **export_kwargs: Any,
) -> HeatmapReport:
    """Heatmaps of ``slides`` (default: every complete slide of the store) from a run.

    A slide that fails (its file moved, no features for the run's encoder, ...) is reported and
    the others go on. ``out/heatmaps.json`` lists every slide's files, prediction and error.
    """
    from wsimm._progress import progress
    from wsimm.store import open_store
    from wsimm.train import load_run
    from wsimm.train._run import resolve_device

    fmts = parse_formats(formats)
    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap {overlap} must be in [0, 1)")
    if export_kwargs.get("scale") is not None:  # once, not once per slide
        _check_scale(export_kwargs["scale"])
    if slides_dir is not None and not Path(slides_dir).is_dir():
        raise ConfigError(f"--slides-dir {slides_dir}: no such folder")
    dev = resolve_device(device)
    r = load_run(run, dev, fusion=True)
    if str(fold) not in ("auto", "all"):  # a fold the run lacks fails every slide alike
        fold_position(r, fold)
    fs = open_store(store)
    have = fs.slides()
    ids = list(slides) if slides else have
    if not ids:
        raise WsimmError(f"{fs.path}: the store has no complete slides to draw")
    unknown = sorted(set(ids) - set(have))
    if unknown and len(unknown) == len(ids):
        raise ConfigError(
            f"{fs.path}: no slide {', '.join(unknown[:5])} in the store (it has "
            f"{', '.join(have[:5])}{' ...' if len(have) > 5 else ''}); check --slide"
        )
    rep = HeatmapReport(Path(out))
    rep.out.mkdir(parents=True, exist_ok=True)
    with progress(quiet=quiet) as bar:
        task = bar.add_task("heatmaps", total=len(ids), rate="")
        for sid in ids:
            t0 = time.perf_counter()
            try:
                ts = tile_scores(r, fs, sid, fold=fold, overlap=overlap, device=dev,
                                 weights=weights, slides_dir=slides_dir, bar=bar)  # fmt: skip
                files = export(ts, rep.out, fmts, slides_dir=slides_dir, **export_kwargs)
                rep.results.append(
                    {
                        "slide_id": sid,
                        "status": "done",
                        "tiles": len(ts),
                        "patient_id": ts.patient_id,
                        "folds": ts.folds,
                        "prediction": ts.prediction,
                        "score": export_kwargs.get("score") or ts.primary,
                        "files": {k: str(p) for k, p in files.items()},
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
            except (WsimmError, OSError) as e:
                rep.results.append({"slide_id": sid, "status": "failed", "error": str(e),
                                    "seconds": round(time.perf_counter() - t0, 3)})  # fmt: skip
            bar.advance(task)
    (rep.out / "heatmaps.json").write_text(json.dumps(rep.results, indent=1))
    return rep
