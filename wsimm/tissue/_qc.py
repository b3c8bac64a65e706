"""QC image: the thumbnail with the tissue contour and the tile grid drawn on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["draw_qc"]


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
) -> np.ndarray:
    """Draw the tissue contour (green) and tile outlines (blue) on the thumbnail.

    ``coords`` are level-0 top-left corners and ``tile_size0`` the tile side in level-0
    pixels; ``downsample`` maps level 0 to thumbnail pixels. Returns the RGB image and writes
    it as PNG when ``path`` is given.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    img = Image.fromarray(thumbnail)
    scale = 1.0
    if max(img.size) > max_px:
        scale = max_px / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    m = mask
    if m.shape != (img.height, img.width):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(img.size)) > 127
    edge = m & ~ndimage.binary_erosion(m, iterations=max(1, round(img.width / 800)))
    arr = np.asarray(img).copy()
    arr[edge] = (0, 200, 0)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    if coords is not None and tile_size0 is not None and len(coords):
        s = scale / downsample
        for x, y in np.asarray(coords):
            draw.rectangle(
                [x * s, y * s, (x + tile_size0) * s, (y + tile_size0) * s],
                outline=(40, 90, 230),
            )
    if title:
        draw.rectangle([0, 0, img.width, 14], fill=(255, 255, 255))
        draw.text((3, 1), title, fill=(0, 0, 0))
    out = np.asarray(img)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    return out
