"""QC image: the thumbnail with the tissue contour and the tile grid drawn on it, a title band,
a legend and a scale bar in µm."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["draw_qc"]

TISSUE = (0, 170, 0)
TILES = (40, 90, 230)


def _font(size: int) -> tuple[Any, bool]:
    """A font of ``size`` px and whether it has the µ glyph: matplotlib's DejaVu Sans when
    matplotlib is installed, else Pillow's built-in font (no µ: "um" is written instead)."""
    from PIL import ImageFont

    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(ttf), size), True
    except (ImportError, OSError):
        pass
    try:  # Pillow >= 10.1 scales its built-in font; older ones have a fixed bitmap font
        return ImageFont.load_default(size=size), False
    except TypeError:
        return ImageFont.load_default(), False


def _wrap(draw: Any, text: str, font: Any, width: float) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (at spaces)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _nice_um(target: float) -> float:
    p = 10 ** math.floor(math.log10(target))
    return next((m * p for m in (5, 2, 1) if m * p <= target), p)


def draw_qc(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    *,
    downsample: float,
    coords: np.ndarray | None = None,
    tile_size0: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    max_px: int = 2048,
    min_px: int = 1024,
    mpp: float | None = None,
) -> np.ndarray:
    """Draw the tissue contour (green) and tile outlines (blue) on the thumbnail.

    ``coords`` are level-0 top-left corners and ``tile_size0`` the tile side in level-0
    pixels; ``downsample`` maps level 0 to thumbnail pixels. The thumbnail is scaled so its
    long side is between ``min_px`` and ``max_px``; a title band (wrapped to the width) goes
    above it and a legend, with a scale bar in µm when the level-0 ``mpp`` is given, below.
    Returns the RGB image and writes it as PNG when ``path`` is given.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    img = Image.fromarray(thumbnail)
    long = max(img.size)
    scale = max_px / long if long > max_px else min_px / long if long < min_px else 1.0
    if scale != 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    m = mask
    if m.shape != (img.height, img.width):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(img.size)) > 127
    line = max(1, round(max(img.size) / 700))
    edge = m & ~ndimage.binary_erosion(m, iterations=line)
    arr = np.asarray(img.convert("RGB")).copy()
    arr[edge] = TISSUE
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    n_tiles = 0
    if coords is not None and tile_size0 is not None and len(coords):
        s = scale / downsample
        n_tiles = len(coords)
        for x, y in np.asarray(coords):
            draw.rectangle(
                [x * s, y * s, (x + tile_size0) * s, (y + tile_size0) * s],
                outline=TILES,
                width=max(1, line // 2),
            )

    fsize = max(14, round(img.width / 60))
    font, has_mu = _font(fsize)
    if not has_mu and title:
        title = title.replace("µ", "u")
    pad = fsize // 2
    probe = ImageDraw.Draw(img)
    title_lines = _wrap(probe, title, font, img.width - 2 * pad) if title else []
    top = (len(title_lines) * round(fsize * 1.3) + 2 * pad) if title_lines else 0
    bottom = round(fsize * 1.3) + 2 * pad
    canvas = Image.new("RGB", (img.width, img.height + top + bottom), (255, 255, 255))
    canvas.paste(img, (0, top))
    d = ImageDraw.Draw(canvas)
    for i, text in enumerate(title_lines):
        d.text((pad, pad + i * round(fsize * 1.3)), text, fill=(0, 0, 0), font=font)
    # legend: tissue contour, tiles, and a scale bar
    y = top + img.height + pad
    x = pad
    for colour, label in ((TISSUE, "tissue contour"), (TILES, f"tiles ({n_tiles})")):
        d.rectangle([x, y + 2, x + fsize, y + fsize], outline=colour, width=max(2, line))
        x += fsize + pad // 2
        d.text((x, y), label, fill=(0, 0, 0), font=font)
        x += d.textlength(label, font=font) + 2 * pad
    if mpp:
        um_per_px = mpp * downsample / scale
        um = _nice_um(img.width * 0.2 * um_per_px)
        bar = um / um_per_px
        label = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} {'µ' if has_mu else 'u'}m"
        lx = img.width - pad - d.textlength(label, font=font)
        bx1 = lx - pad
        d.rectangle([bx1 - bar, y + fsize // 2 - line, bx1, y + fsize // 2 + line], fill=(0, 0, 0))
        d.text((lx, y), label, fill=(0, 0, 0), font=font)
    out = np.asarray(canvas)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
    return out
