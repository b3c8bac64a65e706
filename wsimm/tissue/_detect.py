"""Tissue detection at thumbnail scale (about 8 µm/px).

Brightfield: median-blurred saturation thresholded by Otsu (with a floor so an empty slide is
not split at noise level), minus pen ink (blue, green, red by hue and saturation), near-black
debris and white glare; then morphological closing, hole filling and removal of small pieces.
Dark-field slides (fluorescence: a dark background) are detected by brightness instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from wsimm._memory import release_memory
from wsimm.errors import ConfigError

__all__ = [
    "PRESETS",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "detect_tissue_rgb",
    "resolve_tissue_params",
    "thumbnail_downsample",
]


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection parameters (physical units, so they hold at any slide resolution).

    Attributes
    ----------
    mpp
        Scale the detection works at, µm/px.
    median_um
        Median-filter size before thresholding.
    close_um
        Radius of the morphological closing that joins nearby tissue.
    min_area_um2
        Tissue pieces smaller than this are dropped (dust, specks).
    max_hole_um2
        Holes inside tissue smaller than this are filled (larger ones are real lumens).
    min_saturation
        Floor on the Otsu saturation threshold (0-1).
    reject_pen, reject_black, reject_glare
        Remove pen ink, near-black debris, and bright low-saturation glare.
    pen_margin_um
        Pixels this close to pen ink are removed too (ink edges blend with tissue).
    """

    mpp: float = 8.0
    median_um: float = 24.0
    close_um: float = 16.0
    min_area_um2: float = 10_000.0
    max_hole_um2: float = 40_000.0
    min_saturation: float = 0.07
    reject_pen: bool = True
    reject_black: bool = True
    reject_glare: bool = True
    pen_margin_um: float = 8.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: named parameter sets: ``biopsy`` keeps small fragments, ``resection`` ignores more debris
PRESETS: dict[str, TissueParams] = {
    "default": TissueParams(),
    "biopsy": TissueParams(min_area_um2=2_500.0, max_hole_um2=10_000.0, close_um=8.0),
    "resection": TissueParams(min_area_um2=100_000.0, max_hole_um2=200_000.0, close_um=32.0),
}


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask and how it was made.

    ``mask[i, j]`` covers level-0 pixels ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` with
    ``ds = downsample``.
    """

    mask: np.ndarray
    downsample: float
    mpp: float
    method: str
    params: TissueParams
    threshold: float
    pen_fraction: float
    thumbnail: np.ndarray | None = None

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_um2(self) -> float:
        return float(self.mask.sum()) * self.mpp * self.mpp


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image scaled to 0-1 (256 bins over [0, 1]): the upper
    edge of the last bin of the lower class.

    The histogram counts the 256 uint8 levels (OpenCV's ``calcHist``) and maps each level
    ``v`` to its bin ``floor(v / 255 * 256)``: the same histogram as a float one of the full
    image, without making that float image.
    """
    import cv2

    levels = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [256], [0, 256])
    levels = levels.ravel().astype(np.float64)
    bins = np.minimum((np.arange(256) * 256) // 255, 255)
    hist = np.bincount(bins, weights=levels, minlength=256)
    edges = np.linspace(0.0, 1.0, 257)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _above(values: np.ndarray, thr: float) -> np.ndarray:
    """``values / 255 > thr`` (in float32, as a float image would compare) for a uint8
    image, done as one uint8 comparison."""
    above = np.arange(256, dtype=np.float32) / np.float32(255.0) > np.float32(thr)
    if not above.any():
        return np.zeros(values.shape, bool)
    return values >= int(np.argmax(above))


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hue (0-255 for 0-360 deg), saturation, value (max) and min channel, all uint8.

    OpenCV's SIMD colour conversion: tens of times faster than float numpy on a
    gigapixel slide's thumbnail. Saturation is ``(max - min) / max`` scaled to 255.
    """
    import cv2

    rgb = np.ascontiguousarray(rgb)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    h, s, v = cv2.split(hsv)
    r, g, b = cv2.split(rgb)
    mn = cv2.min(cv2.min(r, g), b)
    return h, s, v, mn


def _deg(d: float) -> int:
    return round(d * 256 / 360) % 256


def pen_ink(rgb: np.ndarray, *, hsv: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Pixels of blue, green or red marker ink, by hue and saturation (``(H, W)`` bool)."""
    h, s, _, _ = hsv if hsv is not None else _hsv(rgb)
    blue = (h >= _deg(195)) & (h <= _deg(255)) & (s > 0.35 * 255)
    green = (h >= _deg(75)) & (h <= _deg(180)) & (s > 0.25 * 255)
    # eosin pink sits at 320-350 deg with moderate saturation; red ink is saturated and orange-red
    red = ((h >= _deg(345)) | (h <= _deg(20))) & (s > 0.6 * 255) & (rgb[..., 0] > 0.35 * 255)
    return blue | green | red


def _close(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary closing with a disk of radius ``r``; the image is padded so that tissue at the
    border does not erode."""
    import cv2

    k = _disk(r).astype(np.uint8)
    padded = np.pad(mask.view(np.uint8), r)
    cv2.morphologyEx(padded, cv2.MORPH_CLOSE, k, dst=padded, borderType=cv2.BORDER_CONSTANT,
                     borderValue=0)  # fmt: skip
    return padded[r:-r, r:-r].astype(bool)


def _labels(img: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a 0/1 uint8 image: labels and OpenCV's stats table.

    Labels are 16-bit (half the memory of int32 on a 4096-px thumbnail) unless the image
    has 65,535 pieces or more, which OpenCV reports as an error: then 32-bit.
    """
    import cv2

    try:
        _, lab, stats, _ = cv2.connectedComponentsWithStats(img, connectivity=connectivity,
                                                            ltype=cv2.CV_16U)  # fmt: skip
    except cv2.error:
        _, lab, stats, _ = cv2.connectedComponentsWithStats(img, connectivity=connectivity,
                                                            ltype=cv2.CV_32S)  # fmt: skip
    return lab, stats


def _lookup(table: np.ndarray, lab: np.ndarray, out: np.ndarray, rows: int = 256) -> None:
    """``out |= table[lab]``, in strips of ``rows`` rows: one full-size gather would index
    through an intp copy of the labels (8 bytes per pixel)."""
    for r0 in range(0, lab.shape[0], rows):
        out[r0 : r0 + rows] |= table[lab[r0 : r0 + rows]]


def _drop_small(mask: np.ndarray, min_area_um2: float, mpp: float) -> np.ndarray:
    """``mask`` without its 8-connected pieces smaller than ``min_area_um2``."""
    import cv2

    lab, stats = _labels(mask.view(np.uint8), 8)
    keep = stats[:, cv2.CC_STAT_AREA] * mpp * mpp >= min_area_um2
    keep[0] = False  # label 0: the background
    if keep[1:].all():  # no piece is too small
        return mask
    out = np.zeros_like(mask)
    _lookup(keep, lab, out)
    return out


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill the holes of ``mask`` smaller than ``max_px`` pixels (in place; returns ``mask``).

    A hole is a 4-connected piece of background that does not touch the image border (the
    complement of 8-connected tissue, as ``scipy.ndimage.binary_fill_holes`` defines it):
    one labelling pass of the background finds the holes and their sizes together.
    """
    import cv2

    h, w = mask.shape
    bg = (~mask).view(np.uint8)
    lab, stats = _labels(bg, 4)
    del bg
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    inner = (left > 0) & (top > 0) & (right < w) & (bottom < h)
    fill = inner & (stats[:, cv2.CC_STAT_AREA] < max_px)
    fill[0] = False  # label 0: the tissue itself
    if fill.any():
        _lookup(fill, lab, mask)
    return mask


#: bits of the rejection map made by :func:`_pixel_maps`
_PEN, _DARK, _GLARE = 1, 2, 4


def _scan(
    strips: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int], p: TissueParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over an RGB image given as ``(first row, rows)`` strips: its saturation and
    value (``max(R, G, B)``), and a map of rejected pixels with one bit each for pen ink
    (``_PEN``), near-black debris (``_DARK``) and glare (``_GLARE``); a bit is never set when
    its rejection is off. All three are ``(H, W)`` uint8.

    Each strip is converted 256 rows at a time: full-size colour conversions (HSV, channel
    splits) of a 4096-px thumbnail would hold ~150 MB at once, and 256 rows stay in the CPU
    cache while their maps are made. The strips can come straight from the slide reader, so
    the RGB image itself need never be whole in memory.
    """
    h, w = shape
    sat = np.empty((h, w), np.uint8)
    value = np.empty((h, w), np.uint8)
    flags = np.zeros((h, w), np.uint8)
    for r0, strip in strips:
        for a in range(0, len(strip), 256):
            part = np.ascontiguousarray(strip[a : a + 256])
            rows = slice(r0 + a, r0 + a + len(part))
            hue, s, v, mn = _hsv(part)
            sat[rows], value[rows] = s, v
            f = flags[rows]
            if p.reject_pen:
                f |= pen_ink(part, hsv=(hue, s, v, mn)).view(np.uint8) * np.uint8(_PEN)
            if p.reject_black:
                f |= (v < 0.25 * 255).view(np.uint8) * np.uint8(_DARK)
            if p.reject_glare:
                f |= ((mn > 0.92 * 255) & (s < 0.04 * 255)).view(np.uint8) * np.uint8(_GLARE)
    return sat, value, flags


def _rejected(flags: np.ndarray, p: TissueParams, mpp: float) -> tuple[np.ndarray | None, float]:
    """Pixels to remove from the tissue (bool, or ``None`` when there are none) and the pen
    fraction: pen ink grown by ``pen_margin_um``, near-black debris grown by one pixel, glare."""
    import cv2

    def bit(b: int) -> np.ndarray:  # 0/1 uint8
        x = flags >> (b.bit_length() - 1)
        x &= 1
        return x

    pen = bit(_PEN)
    n_pen = cv2.countNonZero(pen)
    pen_fraction = n_pen / pen.size if pen.size else 0.0
    bad = None
    if n_pen:
        margin = max(1, round(p.pen_margin_um / mpp))
        bad = cv2.dilate(pen, _disk(margin).astype(np.uint8))
    del pen
    dark = bit(_DARK)
    if cv2.countNonZero(dark):
        d = cv2.dilate(dark, np.ones((3, 3), np.uint8))
        bad = d if bad is None else cv2.bitwise_or(bad, d, dst=bad)
    del dark
    glare = bit(_GLARE)
    if cv2.countNonZero(glare):
        bad = glare if bad is None else cv2.bitwise_or(bad, glare, dst=bad)
    return (None if bad is None else bad.view(bool)), pen_fraction


def detect_tissue_rgb(
    rgb: np.ndarray, *, mpp: float, params: TissueParams | None = None
) -> tuple[np.ndarray, str, float, float]:
    """Detect tissue on an RGB thumbnail at ``mpp`` µm/px.

    Returns ``(mask, method, threshold, pen_fraction)``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"detect_tissue_rgb needs (H, W, 3) RGB, got {rgb.shape}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return _detect([(0, rgb)], rgb.shape[:2], mpp, params or TissueParams())


def _detect(
    strips: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int], mpp: float, p: TissueParams
) -> tuple[np.ndarray, str, float, float]:
    """:func:`detect_tissue_rgb` on an image given as ``(first row, rows)`` strips."""
    import cv2

    sat, value, flags = _scan(strips, shape, p)
    release_memory()  # the strips' buffers
    k = max(1, round(p.median_um / mpp)) | 1
    border = np.concatenate([value[0], value[-1], value[:, 0], value[:, -1]])
    dark_field = float(np.median(border)) < 0.35 * 255

    def median(x: np.ndarray) -> np.ndarray:
        return cv2.medianBlur(x, k) if k > 1 else x

    bad = None
    if dark_field:
        # fluorescence / dark-field: tissue is brighter than the background
        del sat, flags
        val = median(value)
        del value
        thr = max(_otsu(val), 0.1)
        mask = _above(val, thr)
        del val
        method = "otsu-brightness"
        pen_fraction = 0.0
    else:
        del value
        val = median(sat)
        del sat
        thr = max(_otsu(val), p.min_saturation)
        mask = _above(val, thr)
        del val
        method = "otsu-saturation"
        bad, pen_fraction = _rejected(flags, p, mpp)
        del flags
        if bad is not None:
            np.greater(mask, bad, out=mask)  # mask & ~bad
            bad = np.packbits(bad)  # kept for after the closing: 1 bit a pixel
    r = max(0, round(p.close_um / mpp))
    if r:
        mask = _close(mask, r)
    mask = _fill_small_holes(mask, p.max_hole_um2 / (mpp * mpp))
    if bad is not None:
        # closing and hole filling must not bring ink or debris back
        bad = np.unpackbits(bad, count=mask.size).reshape(mask.shape).view(bool)
        np.greater(mask, bad, out=mask)
    del bad
    mask = _drop_small(mask, p.min_area_um2, mpp)
    return mask, method, float(thr), pen_fraction


def resolve_tissue_params(params: TissueParams | str | None) -> TissueParams:
    """A :class:`TissueParams` from itself, a preset name, or ``None`` (the defaults)."""
    if isinstance(params, str):
        if params not in PRESETS:
            raise ConfigError(f"unknown tissue preset {params!r}; choose {', '.join(PRESETS)}")
        return PRESETS[params]
    return params or TissueParams()


def thumbnail_downsample(slide: Any, params: TissueParams | str | None = None) -> float:
    """The level-0 downsample of the thumbnail :func:`detect_tissue` works on: the scale
    of ``params.mpp`` (8 µm/px by default), but at least ~256 px and at most 4096 px on the
    long side (parameters are physical, so they follow the scale)."""
    p = resolve_tissue_params(params)
    long_side = max(slide.dimensions)
    ds = max(1.0, p.mpp / slide.require_mpp())
    ds = min(ds, max(1.0, long_side / 256))
    return max(ds, long_side / 4096, 1.0)


def detect_tissue(
    slide: Any,
    *,
    params: TissueParams | str | None = None,
    keep_thumbnail: bool = True,
) -> TissueMask:
    """Detect tissue on an open :class:`~wsimm.slide.Slide` (its MPP must be known).

    The slide is read at the pyramid level nearest ``params.mpp`` and downsampled in strips,
    so memory stays small for gigapixel slides.
    """
    p = resolve_tissue_params(params)
    mpp0 = slide.require_mpp()
    w0, _ = slide.dimensions
    ds = thumbnail_downsample(slide, p)
    shape = slide.downsampled_shape(ds)
    # the thumbnail is round(w0/ds) wide: its exact scale
    eff_ds = w0 / shape[1]
    mpp_t = mpp0 * eff_ds
    p_eff = replace(p, mpp=mpp_t)
    thumb = None
    if keep_thumbnail:
        thumb = slide.read_downsampled(ds)
        strips: Iterable[tuple[int, np.ndarray]] = [(0, thumb)]
    else:  # detection reduces each strip as it is read: the RGB image is never whole
        strips = slide.iter_downsampled(ds)
    mask, method, thr, pen_frac = _detect(strips, shape, mpp_t, p_eff)
    slide.drop_tile_cache()  # the thumbnail level's tiles are not read again
    release_memory()
    return TissueMask(
        mask=mask,
        downsample=eff_ds,
        mpp=mpp_t,
        method=method,
        params=p,
        threshold=thr,
        pen_fraction=pen_frac,
        thumbnail=thumb,
    )
