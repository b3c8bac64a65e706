"""The synthetic slide's pixels match its ground-truth masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsimm.errors import ConfigError
from wsimm.slide import open_slide
from wsimm.testing import write_synthetic_slide


def _at_mask_scale(sl):
    with open_slide(sl.path) as s:
        img = s.read_downsampled(sl.mask_downsample).astype(np.float32)
    assert img.shape[:2] == sl.tissue.shape
    return img


def _core(mask, it=2):
    return ndimage.binary_erosion(mask, iterations=it)


def test_masks_line_up_with_pixels(synthetic_slide):
    sl = synthetic_slide
    img = _at_mask_scale(sl)
    grey = img.mean(axis=2)
    sat = img.max(axis=2) - img.min(axis=2)
    clean = ~ndimage.binary_dilation(sl.pen | sl.debris, iterations=3)
    tumour = _core(sl.tumour) & clean
    normal = _core(sl.tissue & ~sl.tumour) & clean
    background = _core(~sl.tissue) & clean
    assert tumour.sum() > 50 and normal.sum() > 50 and background.sum() > 50
    # background is bright and grey, tissue is coloured, tumour darker than normal tissue
    assert grey[background].mean() > 235 and sat[background].mean() < 8
    assert sat[normal].mean() > 30
    assert grey[tumour].mean() < grey[normal].mean() - 15
    # a pixel-level classifier from the masks' own statistics separates tumour from normal
    thr = (grey[tumour].mean() + grey[normal].mean()) / 2
    acc = ((grey[tumour] < thr).mean() + (grey[normal] >= thr).mean()) / 2
    assert acc > 0.95


def test_pen_and_debris_have_their_colours(synthetic_slide):
    sl = synthetic_slide
    img = _at_mask_scale(sl)
    pen = _core(sl.pen, 1)
    assert pen.sum() > 20
    r, g, b = (img[..., c][pen] for c in range(3))
    # every pen pixel is dominated by one ink colour, never pink tissue or white glass
    dominant = np.argmax(np.stack([r, g, b]), axis=0)
    assert np.isin(dominant, [0, 1, 2]).all()
    assert (np.stack([r, g, b]).max(axis=0) - np.stack([r, g, b]).min(axis=0)).mean() > 60
    debris = sl.debris & ~ndimage.binary_dilation(sl.pen, iterations=2)
    if debris.any():
        assert img[debris].mean() < 120


def test_level0_tumour_has_denser_darker_nuclei(synthetic_slide):
    sl = synthetic_slide
    ds = sl.mask_downsample

    def dark_fraction(mask):
        ys, xs = np.nonzero(
            _core(mask, 4) & ~ndimage.binary_dilation(sl.pen | sl.debris, iterations=4)
        )
        i = len(ys) // 2
        with open_slide(sl.path) as s:
            patch = s.read_region((int(xs[i]) * ds - 128, int(ys[i]) * ds - 128), 0, (256, 256))
        return (patch.mean(axis=2) < 110).mean()

    assert dark_fraction(sl.tumour) > 2 * dark_fraction(sl.tissue & ~sl.tumour)


def test_deterministic_and_seed_dependent(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.svs", width=1024, height=768, seed=5)
    b = write_synthetic_slide(tmp_path / "b.svs", width=1024, height=768, seed=5)
    c = write_synthetic_slide(tmp_path / "c.svs", width=1024, height=768, seed=6)
    assert np.array_equal(a.tissue, b.tissue) and not np.array_equal(a.tissue, c.tissue)
    with open_slide(a.path) as sa, open_slide(b.path) as sb:
        assert np.array_equal(
            sa.read_region((0, 0), 0, (1024, 768)), sb.read_region((0, 0), 0, (1024, 768))
        )


def test_tissue_fraction_is_respected(tmp_path):
    s = write_synthetic_slide(tmp_path / "f.svs", width=2048, height=2048, tissue_fraction=0.5)
    assert s.tissue.mean() == pytest.approx(0.5, abs=0.05)
    assert s.tumour[~s.tissue].sum() == 0


def test_bad_parameters(tmp_path):
    with pytest.raises(ConfigError, match="pen colour"):
        write_synthetic_slide(tmp_path / "x.svs", width=512, height=512, pen_marks=("purple",))
    with pytest.raises(ConfigError, match="positive"):
        write_synthetic_slide(tmp_path / "x.svs", width=0, height=512)
    assert not (tmp_path / "x.svs").exists()
