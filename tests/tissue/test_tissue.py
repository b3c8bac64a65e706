from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_slide
from wsimm.slide import open_slide
from wsimm.testing import write_synthetic_slide
from wsimm.tissue import detect_tissue, draw_qc
from wsimm.tissue._qc import TILES, TISSUE


def _at_gt_scale(mask, shape):
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(shape[::-1], 0)).astype(bool)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_pen_rejection_on_synthetic(tmp_path, seed):
    sl = write_synthetic_slide(
        tmp_path / "s.svs", width=8192, height=6144, seed=seed, mpp=0.25,
        pen_marks=("blue", "green", "red"), debris=True, folds=True,
    )  # fmt: skip
    with open_slide(sl.path) as s:
        tm = detect_tissue(s)
    gt = sl.usable_tissue
    m = _at_gt_scale(tm.mask, gt.shape)
    dice = 2 * (m & gt).sum() / (m.sum() + gt.sum())
    assert dice >= 0.95
    assert 1 - (m & sl.pen).sum() / sl.pen.sum() >= 0.90
    # every visibly black debris pixel is rejected (sub-pixel specks render only grey)
    visible = _at_gt_scale(tm.thumbnail.max(axis=2) < 64, gt.shape) & sl.debris
    assert visible.any() and not (m & visible).any()


def test_blank_slide_has_no_tissue(tmp_path):
    sl = write_synthetic_slide(tmp_path / "b.svs", width=2048, height=2048, tissue_fraction=0.0)
    with open_slide(sl.path) as s:
        assert detect_tissue(s).mask.sum() == 0


def test_qc_image_draws_contour_and_grid(tmp_path, synthetic_slide):
    with open_slide(synthetic_slide.path) as s:
        tm = detect_tissue(s)
    coords = np.array([[0, 0], [1024, 1024]])
    img = draw_qc(tm.thumbnail, tm.mask, downsample=tm.downsample, coords=coords,
                  tile_size0=512, path=tmp_path / "qc.png", mpp=0.5, title="short")  # fmt: skip
    assert (tmp_path / "qc.png").exists()
    assert ((img == TISSUE).all(axis=2)).sum() > 10  # contour pixels
    assert ((img == TILES).all(axis=2)).sum() > 10  # tile outlines
    # legible: at least 1,024 px wide or high whatever the thumbnail's size, and a legend band
    # below the thumbnail with both colours' keys
    assert max(tm.thumbnail.shape[:2]) < 1024 <= max(img.shape[:2])
    legend = img[-40:]
    assert (legend == TISSUE).all(axis=2).any() and (legend == TILES).all(axis=2).any()
    # a long title wraps onto more lines instead of running off the image
    long = draw_qc(tm.thumbnail, tm.mask, downsample=tm.downsample, mpp=0.5,
                   title="a rather long slide name " * 12)  # fmt: skip
    assert long.shape[1] == img.shape[1] and long.shape[0] > img.shape[0] + 40


def test_real_cmu_tissue_fraction():
    with open_slide(shared_slide("CMU-1-Small-Region.svs")) as s:
        tm = detect_tissue(s)
    assert 0.2 < tm.tissue_fraction < 0.45
    assert tm.method == "otsu-saturation"


def test_fluorescence_uses_brightness():
    with open_slide(shared_slide("hamamatsu-test3-DAPI-2-387.ndpi")) as s:
        tm = detect_tissue(s)
    assert tm.method == "otsu-brightness" and tm.mask.any()


def test_hole_filling_matches_scipy_and_keeps_large_holes():
    from scipy import ndimage

    from wsimm.tissue._detect import _fill_small_holes

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((64, 80)) < rng.uniform(0.3, 0.8)
        np.testing.assert_array_equal(
            _fill_small_holes(mask.copy(), np.inf), ndimage.binary_fill_holes(mask)
        )
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[10:30, 10:30] = False  # a 400-px hole
    ring[7, 7] = False  # a 1-px hole
    out = _fill_small_holes(ring, 100)
    assert out[7, 7] and not out[10:30, 10:30].any()


def test_streamed_detection_equals_detection_on_the_whole_thumbnail(tmp_path):
    # without a kept thumbnail, detection reduces each strip as the slide reader yields it
    sl = write_synthetic_slide(
        tmp_path / "s.svs", width=6144, height=4608, seed=4, mpp=0.25,
        pen_marks=("blue", "red"), debris=True,
    )  # fmt: skip
    with open_slide(sl.path) as s:
        whole = detect_tissue(s)
        streamed = detect_tissue(s, keep_thumbnail=False)
        strips = list(s.iter_downsampled(whole.downsample, strip_pixels=1 << 14))
    assert streamed.thumbnail is None and len(strips) > 3
    np.testing.assert_array_equal(streamed.mask, whole.mask)
    assert (streamed.threshold, streamed.pen_fraction) == (whole.threshold, whole.pen_fraction)
    assert whole.pen_fraction > 0 and whole.mask.any()
    np.testing.assert_array_equal(np.concatenate([b for _, b in strips]), whole.thumbnail)


def test_small_pieces_dropped_past_16_bit_labels():
    # 90,000 isolated pixels overflow 16-bit labels: the 32-bit fallback must give the same
    from scipy import ndimage

    from wsimm.tissue._detect import _drop_small

    mask = np.zeros((600, 600), bool)
    mask[::2, ::2] = True
    mask[100:140, 100:160] = True  # one piece of 2,400+ pixels
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())
    assert n > 65_535
    expect = (sizes >= 50)[lab] & mask
    np.testing.assert_array_equal(_drop_small(mask, 50.0, 1.0), expect)
    small = mask[:100, :100]  # under 16 bits: nothing is big enough to keep
    assert not _drop_small(small, 50.0, 1.0).any()


def test_otsu_on_uint8_equals_float_histogram():
    from wsimm.tissue._detect import _above, _otsu

    def reference(u):
        val = u.astype(np.float32) / 255.0
        hist, edges = np.histogram(val, bins=256, range=(0.0, 1.0))
        hist = hist.astype(np.float64)
        centers = (edges[:-1] + edges[1:]) / 2
        w0 = np.cumsum(hist)
        w1 = w0[-1] - w0
        m0 = np.cumsum(hist * centers)
        between = w0 * w1 * (m0 / np.maximum(w0, 1) - (m0[-1] - m0) / np.maximum(w1, 1)) ** 2
        thr = float(edges[int(np.argmax(between)) + 1])
        return thr, val > thr

    rng = np.random.default_rng(1)
    for _ in range(10):
        u = np.concatenate([rng.normal(30, 10, 5000), rng.normal(rng.uniform(80, 200), 20, 3000)])
        u = np.clip(u, 0, 255).astype(np.uint8).reshape(100, 80)
        thr, mask = reference(u)
        assert _otsu(u) == thr
        np.testing.assert_array_equal(_above(u, thr), mask)
    assert not _above(np.full((4, 4), 255, np.uint8), 1.0).any()
