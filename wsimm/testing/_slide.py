"""Synthetic H&E-like pyramidal slides with ground-truth masks.

Every pyramid level is rendered directly, tile by tile, from two small ingredients:

- masks at ``mask_downsample`` (tissue, tumour, pen ink, debris, folds), a few MB even for a
  gigapixel slide;
- periodic texture atlases (stroma with normal nuclei, tumour with denser, larger, darker
  nuclei) whose period divides every level's downsample, so a level's texture is exactly the
  area-average of level 0's.

Nothing of slide size is ever held in memory, so a 100,000 x 80,000 px slide writes with
bounded RSS.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsimm.errors import ConfigError

__all__ = ["SyntheticSlide", "write_synthetic_slide"]

_BACKGROUND = np.array([242, 241, 243], np.float32)
_PEN_COLOURS = {
    "blue": np.array([35, 55, 165], np.float32),
    "green": np.array([30, 130, 70], np.float32),
    "red": np.array([185, 30, 45], np.float32),
}
_DEBRIS = np.array([35, 28, 30], np.float32)
_ATLAS_PX = 2048  # texture period at level 0; divisible by every level downsample


@dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    Masks are boolean arrays at ``mask_downsample`` (mask pixel ``(i, j)`` covers level-0
    pixels ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``).
    """

    path: Path
    width: int
    height: int
    mpp: float
    mask_downsample: int
    level_downsamples: tuple[int, ...]
    tissue: np.ndarray
    tumour: np.ndarray
    pen: np.ndarray
    debris: np.ndarray
    fold: np.ndarray
    seed: int

    @property
    def usable_tissue(self) -> np.ndarray:
        """Tissue a detector should keep: tissue without pen ink or debris on it."""
        return self.tissue & ~self.pen & ~self.debris


# --------------------------------------------------------------------------------------
# masks
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field on ``shape`` with about ``cells`` features across the long side."""
    from scipy import ndimage

    h, w = shape
    long_side = max(h, w)
    gh = max(4, round(cells * h / long_side))
    gw = max(4, round(cells * w / long_side))
    coarse = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), sigma=1.2, mode="wrap")
    field = ndimage.zoom(coarse, (h / gh, w / gw), order=3, mode="grid-wrap", grid_mode=True)
    out = np.zeros(shape, np.float32)
    out[: min(h, field.shape[0]), : min(w, field.shape[1])] = field[:h, :w]
    return out


def _threshold_fraction(field: np.ndarray, within: np.ndarray, fraction: float) -> np.ndarray:
    vals = field[within]
    if vals.size == 0 or fraction <= 0:
        return np.zeros_like(within)
    thr = np.quantile(vals, 1.0 - min(fraction, 1.0))
    return within & (field >= thr)


def _make_masks(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    tissue_fraction: float,
    tumour_fraction: float,
    pen_marks: tuple[str, ...],
    debris: bool,
    folds: bool,
) -> dict[str, np.ndarray]:
    from PIL import Image, ImageDraw
    from scipy import ndimage

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # keep tissue away from the slide edges: a soft elliptical window
    win = 1.0 - (((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) * 3.2
    field = _smooth_field(rng, shape, 7) + 1.5 * win
    inside = np.ones(shape, bool)
    tissue = _threshold_fraction(field, inside, tissue_fraction)
    tissue = ndimage.binary_opening(tissue, iterations=1)
    tumour = _threshold_fraction(_smooth_field(rng, shape, 9), tissue, tumour_fraction)
    tumour = ndimage.binary_opening(tumour, iterations=1) & tissue
    fold = np.zeros(shape, bool)
    if folds:
        f = _smooth_field(rng, shape, 5)
        band = np.abs(f) < 0.06 * (np.abs(f).max() + 1e-6)
        fold = ndimage.binary_dilation(band, iterations=1) & tissue
    pen = np.zeros(shape, bool)
    pen_colour = np.zeros(shape, np.uint8)  # 0 none, 1.. index into pen colours
    width = max(2, round(0.012 * max(h, w)))
    for ci in range(1, len(pen_marks) + 1):
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        # a loose circle around some tissue, or a free stroke, like a pathologist's mark
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        r = rng.uniform(0.08, 0.16) * max(h, w)
        t = np.linspace(0, rng.uniform(1.4, 1.9) * np.pi, 64) + rng.uniform(0, 2 * np.pi)
        wobble = 1 + 0.08 * np.sin(3 * t + rng.uniform(0, 6))
        pts = list(zip(cx + r * wobble * np.cos(t), cy + r * wobble * np.sin(t), strict=True))
        draw.line(pts, fill=255, width=width, joint="curve")
        m = np.asarray(img) > 127
        pen |= m
        pen_colour[m] = ci
    deb = np.zeros(shape, bool)
    if debris:
        n = max(3, round(h * w / 40000))
        for _ in range(n):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.8, 2.5) * max(1.0, max(h, w) / 400)
            deb |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        deb &= ~pen
    return {
        "tissue": tissue,
        "tumour": tumour,
        "fold": fold,
        "pen": pen,
        "pen_colour": pen_colour,
        "debris": deb,
    }


# --------------------------------------------------------------------------------------
# textures
def _periodic_noise(rng: np.random.Generator, n: int, scale_px: float) -> np.ndarray:
    """Periodic smooth noise on an ``n x n`` torus, unit variance, feature size ``scale_px``."""
    import scipy.fft

    f = np.fft.fftfreq(n)
    g = np.exp(-(f**2) * (math.pi * scale_px) ** 2)  # the Gaussian spectrum is separable
    spectrum = g[:, None] * g[None, :]
    z = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    field = scipy.fft.ifft2(z * spectrum, workers=-1).real
    field -= field.mean()
    return (field / (field.std() + 1e-9)).astype(np.float32)


def _render_atlas(
    rng: np.random.Generator,
    n: int,
    mpp: float,
    *,
    cytoplasm: tuple[float, float, float],
    nucleus: tuple[float, float, float],
    radius_um: float,
    spacing_um2: float,
    darkness: float,
) -> np.ndarray:
    """An ``n x n`` periodic tissue texture: fibrous eosin background plus nuclei."""
    fibres = _periodic_noise(rng, n, 6.0 / mpp)
    fine = _periodic_noise(rng, n, 1.5 / mpp)
    base = np.empty((n, n, 3), np.float32)
    for c in range(3):
        base[:, :, c] = cytoplasm[c] + 10 * fibres + 5 * fine
    area_um2 = (n * mpp) ** 2
    count = int(area_um2 / spacing_um2)
    r_px = radius_um / mpp
    cx = rng.uniform(0, n, count)
    cy = rng.uniform(0, n, count)
    rx = np.clip(rng.normal(r_px, 0.18 * r_px, count), 0.6, None)
    ry = rx * rng.uniform(0.65, 1.0, count)
    ang = rng.uniform(0, math.pi, count)
    dark = rng.uniform(1 - 0.25, 1 + 0.25, count) * darkness
    col = np.asarray(nucleus, np.float32)
    for i in range(count):
        rr = math.ceil(max(rx[i], ry[i])) + 1
        ys = np.arange(int(cy[i]) - rr, int(cy[i]) + rr + 1)
        xs = np.arange(int(cx[i]) - rr, int(cx[i]) + rr + 1)
        dy = (ys + 0.5 - cy[i])[:, None]
        dx = (xs + 0.5 - cx[i])[None, :]
        ca, sa = math.cos(ang[i]), math.sin(ang[i])
        u = (dx * ca + dy * sa) / rx[i]
        v = (-dx * sa + dy * ca) / ry[i]
        a = np.clip((1.0 - (u * u + v * v)) * max(rx[i], 1.0), 0.0, 1.0)[:, :, None] * 0.92
        iy, ix = np.ix_(ys % n, xs % n)
        patch = base[iy, ix]
        target = col / dark[i]
        base[iy, ix] = patch * (1 - a) + target * a
    return np.clip(base, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _level0_atlases(mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Stroma and tumour textures at ``mpp``; a fixed texture seed, so they are cached, in
    memory and on disk (``$WSIMM_CACHE``, else ``~/.cache/wsimm``): rendering takes ~4 s, and
    every process that writes synthetic slides (tests, examples, the demo) needs them."""
    import hashlib
    import inspect

    try:
        src = "".join(
            inspect.getsource(f) for f in (_periodic_noise, _render_atlas, _render_atlases)
        )
    except (OSError, TypeError):  # no source to key the cache by: render every time
        return _render_atlases(mpp)
    key = hashlib.sha1(src.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("WSIMM_CACHE") or Path.home() / ".cache" / "wsimm")
    path = cache / f"atlas-{mpp:.6g}-{_ATLAS_PX}-{key}.npz"
    try:
        with np.load(path) as z:
            return z["stroma"], z["tumour"]
    except (OSError, KeyError, ValueError):
        pass
    stroma, tumour = _render_atlases(mpp)
    try:  # best effort: a read-only home only costs the render next time
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, stroma=stroma, tumour=tumour)
        os.replace(tmp, path)
    except OSError:
        pass
    return stroma, tumour


def _render_atlases(mpp: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240611)
    stroma = _render_atlas(
        rng, _ATLAS_PX, mpp, cytoplasm=(232, 165, 198), nucleus=(92, 58, 140),
        radius_um=2.6, spacing_um2=140.0, darkness=1.0,
    )  # fmt: skip
    tumour = _render_atlas(
        rng, _ATLAS_PX, mpp, cytoplasm=(205, 140, 190), nucleus=(70, 38, 118),
        radius_um=4.0, spacing_um2=65.0, darkness=1.3,
    )  # fmt: skip
    return stroma, tumour


@functools.lru_cache(maxsize=16)
def _atlases(mpp: float, d: int) -> dict[str, np.ndarray]:
    stroma, tumour = _level0_atlases(mpp)
    return {f"stroma{d}": _downsample_atlas(stroma, d), f"tumour{d}": _downsample_atlas(tumour, d)}


def _downsample_atlas(atlas: np.ndarray, d: int) -> np.ndarray:
    if d == 1:
        return atlas
    n = atlas.shape[0] // d
    return (
        atlas.reshape(n, d, n, d, 3).astype(np.float32).mean(axis=(1, 3)).round().astype(np.uint8)
    )


# --------------------------------------------------------------------------------------
# tile rendering
def _weights(start_px: int, count: int, d: int, m: int, mask_len: int) -> tuple[np.ndarray, int]:
    """``(count, p)`` weights mapping mask pixels to ``count`` level pixels starting at
    level pixel ``start_px`` (level downsample ``d``, mask downsample ``m``), and the first
    mask index ``p`` columns start at. Bilinear when level pixels are finer than mask pixels,
    area-averaging when coarser."""
    ratio = d / m  # mask pixels per level pixel
    j = np.arange(count, dtype=np.float64)
    if ratio < 1:
        u = (start_px + j + 0.5) * ratio - 0.5
        i0 = np.floor(u).astype(np.int64)
        f = u - i0
        lo = max(0, int(i0.min()))
        hi = min(mask_len - 1, int(i0.max()) + 1)
        wmat = np.zeros((count, hi - lo + 1), np.float32)
        a = np.clip(i0, 0, mask_len - 1) - lo
        b = np.clip(i0 + 1, 0, mask_len - 1) - lo
        np.add.at(wmat, (np.arange(count), a), (1 - f).astype(np.float32))
        np.add.at(wmat, (np.arange(count), b), f.astype(np.float32))
        return wmat, lo
    e0 = (start_px + j) * ratio
    e1 = e0 + ratio
    lo = max(0, math.floor(e0[0]))
    hi = min(mask_len, math.ceil(e1[-1]))
    if hi <= lo:
        return np.zeros((count, 1), np.float32), min(lo, mask_len - 1)
    idx = np.arange(lo, hi, dtype=np.float64)
    overlap = np.clip(
        np.minimum(e1[:, None], idx[None, :] + 1) - np.maximum(e0[:, None], idx), 0, None
    )
    return (overlap / ratio).astype(np.float32), lo


class _Renderer:
    def __init__(
        self,
        masks: dict[str, np.ndarray],
        atlases: dict[str, np.ndarray],
        mask_ds: int,
        pen_colours: list[np.ndarray],
        tile: int,
        *,
        offset: int = 0,
    ) -> None:
        self.offset = offset
        # masks stay uint8 (slide-sized); only the few pixels under a tile become float
        self.masks = {k: v.astype(np.uint8) for k, v in masks.items() if k != "pen_colour"}
        self.pen_index = masks["pen_colour"]
        self.pen_colours = pen_colours
        self.atlases = atlases
        self.m = mask_ds
        self.tile = tile
        self.bg_tile = np.empty((tile, tile, 3), np.uint8)
        self.bg_tile[:] = _BACKGROUND.astype(np.uint8)
        self.mh, self.mw = masks["tissue"].shape

    def _alpha(
        self, name: str, wy: np.ndarray, y0: int, wx: np.ndarray, x0: int
    ) -> np.ndarray | None:
        rows, cols = slice(y0, y0 + wy.shape[1]), slice(x0, x0 + wx.shape[1])
        if name.startswith("pen") and name != "pen":  # one ink colour
            patch = (self.pen_index[rows, cols] == int(name[3:])).astype(np.float32)
        else:
            patch = self.masks[name][rows, cols].astype(np.float32)
        if patch.shape != (wy.shape[1], wx.shape[1]):
            pad = np.zeros((wy.shape[1], wx.shape[1]), np.float32)
            pad[: patch.shape[0], : patch.shape[1]] = patch
            patch = pad
        if not patch.any():
            return None
        return wy @ patch @ wx.T

    def _texture(self, kind: str, d: int, x: int, y: int) -> np.ndarray:
        atlas = self.atlases[f"{kind}{d}"]
        n = atlas.shape[0]
        t = self.tile
        o = self.offset // d
        rows = (y + o + np.arange(t)) % n
        cols = (x + o + np.arange(t)) % n
        return atlas[rows][:, cols].astype(np.float32)

    def render(self, d: int, x: int, y: int) -> np.ndarray:
        t = self.tile
        wy, y0 = _weights(y, t, d, self.m, self.mh)
        wx, x0 = _weights(x, t, d, self.m, self.mw)
        tissue = self._alpha("tissue", wy, y0, wx, x0)
        pens = [self._alpha(f"pen{i + 1}", wy, y0, wx, x0) for i in range(len(self.pen_colours))]
        debris = self._alpha("debris", wy, y0, wx, x0)
        if tissue is None and debris is None and all(p is None for p in pens):
            return self.bg_tile
        out = np.broadcast_to(_BACKGROUND, (t, t, 3)).astype(np.float32)
        if tissue is not None:
            tex = self._texture("stroma", d, x, y)
            tumour = self._alpha("tumour", wy, y0, wx, x0)
            if tumour is not None:
                ta = tumour[:, :, None]
                tex = tex * (1 - ta) + self._texture("tumour", d, x, y) * ta
            fold = self._alpha("fold", wy, y0, wx, x0)
            if fold is not None:
                tex = tex * (1 - 0.35 * fold[:, :, None])
            a = tissue[:, :, None]
            out = out * (1 - a) + tex * a
        if debris is not None:
            a = debris[:, :, None]
            out = out * (1 - a) + _DEBRIS * a
        for colour, pa in zip(self.pen_colours, pens, strict=True):
            if pa is not None:
                a = 0.85 * pa[:, :, None]
                out = out * (1 - a) + colour * a
        return np.clip(out, 0, 255).astype(np.uint8)

    def level_tiles(self, d: int, lw: int, lh: int) -> Iterator[np.ndarray]:
        t = self.tile
        for ty in range(0, lh, t):
            for tx in range(0, lw, t):
                yield self.render(d, tx, ty)

    def whole_level(self, d: int, lw: int, lh: int) -> np.ndarray:
        t = self.tile
        out = np.empty((math.ceil(lh / t) * t, math.ceil(lw / t) * t, 3), np.uint8)
        for ty in range(0, lh, t):
            for tx in range(0, lw, t):
                out[ty : ty + t, tx : tx + t] = self.render(d, tx, ty)
        return out[:lh, :lw]


# --------------------------------------------------------------------------------------
def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 8192,
    height: int = 6144,
    seed: int = 0,
    mpp: float = 0.25,
    tile_size: int = 256,
    tissue_fraction: float = 0.35,
    tumour_fraction: float = 0.3,
    pen_marks: tuple[str, ...] | list[str] = (),
    debris: bool = False,
    folds: bool = False,
    mask_downsample: int = 32,
    jpeg_quality: int = 80,
    min_level_size: int = 512,
    workers: int | None = None,
) -> SyntheticSlide:
    """Write a pyramidal, tiled, JPEG-compressed Aperio-style TIFF with H&E-like content.

    Parameters
    ----------
    path
        Output file (``.svs`` or ``.tiff``); parent folders are created.
    width, height
        Level-0 size in pixels.
    seed
        Everything is deterministic from the seed.
    mpp
        Level-0 µm/px written to the Aperio description (``MPP``, ``AppMag`` = 10/mpp) and the
        TIFF resolution tags.
    tissue_fraction, tumour_fraction
        Fraction of the slide area covered by tissue, and of the tissue that is tumour (denser,
        larger, darker nuclei).
    pen_marks
        Pen ink strokes to draw, any of ``"blue"``, ``"green"``, ``"red"``.
    debris, folds
        Add near-black debris specks, and darker tissue folds.
    mask_downsample
        Scale of the returned masks relative to level 0 (32 at 0.25 µm/px = 8 µm/px).
    min_level_size
        Pyramid levels (downsample x4 each) are added while the longest side is at least this.
    workers
        Threads for JPEG compression (default: all cores).

    Returns
    -------
    SyntheticSlide
        The path, geometry and ground-truth masks (tissue, tumour, pen, debris, fold).
    """
    import tifffile
    from PIL import Image

    if width < 1 or height < 1:
        raise ConfigError(f"synthetic slide size must be positive, got {width}x{height}")
    if not 0.02 <= mpp <= 50:
        raise ConfigError(f"synthetic slide mpp {mpp} outside 0.02-50 µm/px")
    for c in pen_marks:
        if c not in _PEN_COLOURS:
            raise ConfigError(f"unknown pen colour {c!r}; choose from {', '.join(_PEN_COLOURS)}")
    if tile_size % 16:
        raise ConfigError(f"tile_size must be a multiple of 16, got {tile_size}")
    if mask_downsample < 1:
        raise ConfigError(f"mask_downsample must be >= 1, got {mask_downsample}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    mh, mw = math.ceil(height / mask_downsample), math.ceil(width / mask_downsample)
    masks = _make_masks(
        rng,
        (mh, mw),
        tissue_fraction=tissue_fraction,
        tumour_fraction=tumour_fraction,
        pen_marks=tuple(pen_marks),
        debris=debris,
        folds=folds,
    )
    downsamples = [1]
    while max(width, height) / (downsamples[-1] * 4) >= min_level_size and downsamples[-1] < 256:
        downsamples.append(downsamples[-1] * 4)
    atlases = {k: v for d in downsamples for k, v in _atlases(mpp, d).items()}
    # each slide starts at its own place in the periodic texture (aligned to every level)
    offset = int(rng.integers(0, _ATLAS_PX // 256)) * 256
    renderer = _Renderer(
        masks, atlases, mask_downsample, [_PEN_COLOURS[c] for c in pen_marks], tile_size,
        offset=offset,
    )  # fmt: skip

    # The smallest level is tiny: render it into memory for the thumbnail and macro images.
    dmin = downsamples[-1]
    low = renderer.whole_level(dmin, math.ceil(width / dmin), math.ceil(height / dmin))
    thumb_img = Image.fromarray(low)
    thumb_img.thumbnail((1024, 768), Image.Resampling.BOX)
    thumb = np.asarray(thumb_img)
    label = _label_image(seed)
    macro = _macro_image(low, label)

    mag = round(10.0 / mpp, 2)
    mag_s = f"{mag:g}"
    common = (
        f"|AppMag = {mag_s}|MPP = {mpp:.6g}|ScanScope ID = WSIMM-SYNTH|Filename = {path.stem}"
        f"|wsimm.synthetic = 1|wsimm.seed = {seed}"
    )
    head = "Aperio Image Library v12.0.15 \r\n"
    res = (1e4 / mpp, 1e4 / mpp)
    opts = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": jpeg_quality},
        "metadata": None,
        "resolution": res,
        "resolutionunit": "CENTIMETER",
        "maxworkers": workers or os.cpu_count() or 1,
    }
    tmp = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, d in enumerate(downsamples):
            lw, lh = math.ceil(width / d), math.ceil(height / d)
            if i == 0:
                desc = (
                    f"{head}{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size}) "
                    f"JPEG/RGB Q={jpeg_quality}{common}"
                )
            else:
                desc = (
                    f"{head}{width}x{height} -> {lw}x{lh} - ({tile_size}x{tile_size}) "
                    f"JPEG/RGB Q={jpeg_quality}{common}"
                )
            tw.write(
                renderer.level_tiles(d, lw, lh),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                description=desc,
                subfiletype=0,
                **opts,
            )
            if i == 0:  # Aperio puts the thumbnail second, stripped
                tw.write(
                    thumb,
                    description=f"{head}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} "
                    f"- JPEG/RGB Q={jpeg_quality}{common}",
                    subfiletype=0,
                    **opts,
                )
        tw.write(label, description=f"{head}label {label.shape[1]}x{label.shape[0]}",
                 subfiletype=1, **opts)  # fmt: skip
        tw.write(macro, description=f"{head}macro {macro.shape[1]}x{macro.shape[0]}",
                 subfiletype=9, **opts)  # fmt: skip
    os.replace(tmp, path)
    return SyntheticSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        mask_downsample=mask_downsample,
        level_downsamples=tuple(downsamples),
        tissue=masks["tissue"],
        tumour=masks["tumour"],
        pen=masks["pen"],
        debris=masks["debris"],
        fold=masks["fold"],
        seed=seed,
    )


def _label_image(seed: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (400, 400), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed + 7)
    x = 40
    while x < 360:  # a barcode-like pattern
        w = int(rng.integers(2, 7))
        draw.rectangle([x, 60, x + w, 200], fill=(0, 0, 0))
        x += w + int(rng.integers(2, 6))
    draw.text((40, 240), f"wsimm synthetic #{seed}", fill=(0, 0, 0))
    return np.asarray(img)


def _macro_image(low: np.ndarray, label: np.ndarray) -> np.ndarray:
    from PIL import Image

    h = 400
    slide = Image.fromarray(low)
    slide = slide.resize((max(1, round(slide.width * h / slide.height)), h), Image.Resampling.BOX)
    out = Image.new("RGB", (slide.width + h, h), (225, 225, 225))
    out.paste(Image.fromarray(label), (0, 0))
    out.paste(slide, (h, 0))
    return np.asarray(out)
