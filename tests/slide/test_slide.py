"""Slide reader behaviour on wsimm's own synthetic slides and hand-made files."""

from __future__ import annotations

import glob
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from wsimm.errors import (
    ConfigError,
    MissingMPPError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from wsimm.slide import as_rgb_uint8, find_slides, inspect_slides, open_slide, open_slide_cached


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_synthetic_slide_opens_with_its_mpp(synthetic_slide, backend):
    with open_slide(synthetic_slide.path, backend=backend) as s:
        assert s.dimensions == (4096, 3072)
        assert s.mpp == pytest.approx(0.5)
        assert s.mpp_source == "aperio.MPP"
        assert s.vendor == "aperio"
        assert s.level_downsamples == pytest.approx((1.0, 4.0))
        assert {"thumbnail", "label", "macro"} <= set(s.associated_image_names)


def test_synthetic_slide_opens_in_tifffile(synthetic_slide):
    with tifffile.TiffFile(synthetic_slide.path) as tf:
        assert tf.is_svs
        page = tf.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
        assert page.shape == (3072, 4096, 3)
        fields = dict(kv.split(" = ", 1) for kv in page.description.split("|") if " = " in kv)
        assert float(fields["MPP"]) == pytest.approx(0.5)
        xres = page.tags["XResolution"].value
        assert 1e4 / (xres[0] / xres[1]) == pytest.approx(0.5)
        assert len(tf.series[0].levels) == 2


def test_out_of_bounds_is_white_in_both_backends(synthetic_slide):
    for backend in ("openslide", "tiffslide"):
        with open_slide(synthetic_slide.path, backend=backend) as s:
            r = s.read_region((4000, 3000), 0, (200, 150))
            assert r.shape == (150, 200, 3)
            assert (r[100:, 100:] == 255).all()
            r = s.read_region((-50, -50), 0, (40, 40))
            assert (r == 255).all()


def test_backends_agree_on_synthetic_pixels(synthetic_slide):
    p = synthetic_slide.path
    with open_slide(p, backend="openslide") as a, open_slide(p, backend="tiffslide") as b:
        for level in (0, 1):
            x = a.read_region((1024, 768), level, (300, 200)).astype(float)
            y = b.read_region((1024, 768), level, (300, 200)).astype(float)
            assert np.abs(x - y).mean() < 1.0


def test_thumbnail_fits_and_keeps_aspect(synthetic_slide):
    with open_slide(synthetic_slide.path) as s:
        t = s.get_thumbnail((300, 300))
        assert t.shape == (225, 300, 3)
        full = s.read_downsampled(16.0)
        assert full.shape == (192, 256, 3)


def test_as_rgb_uint8_conversions():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (10, 20, 30, 0)  # transparent -> white
    out = as_rgb_uint8(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    grey16 = np.array([[0, 65535], [257 * 100, 32768]], np.uint16)
    out = as_rgb_uint8(grey16)
    assert out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 255], [100, 128]]
    assert (out[..., 0] == out[..., 2]).all()
    assert as_rgb_uint8(np.ones((1, 1), np.float32)).tolist() == [[[255, 255, 255]]]
    with pytest.raises(SlideReadError):
        as_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


def test_grey_and_16bit_tiff_read_as_rgb(tmp_path):
    p = tmp_path / "grey16.tif"
    data = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 65536).astype(np.uint16)
    tifffile.imwrite(p, data, tile=(128, 128), photometric="minisblack")
    with open_slide(p, mpp=0.5) as s:
        r = s.read_region((0, 0), 0, (256, 256))
        assert r.shape == (256, 256, 3) and r.dtype == np.uint8
        assert r[255, 255, 0] == round(int(data[255, 255]) / 257)
        assert s.mpp_source == "user override"


def test_mpp_override_and_validation(synthetic_slide):
    with open_slide(synthetic_slide.path, mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "user override"
        assert "0.5" in s.info().mpp_note
    with pytest.raises(ConfigError, match="not a plausible"):
        open_slide(synthetic_slide.path, mpp=1000)


def test_missing_mpp_error_says_how_to_fix(tmp_path):
    p = tmp_path / "nompp.tif"
    tifffile.imwrite(p, np.full((64, 64, 3), 200, np.uint8), tile=(32, 32))
    with open_slide(p) as s:
        assert s.mpp is None
        with pytest.raises(MissingMPPError, match="--slide-mpp") as ei:
            s.require_mpp()
        assert str(p) in str(ei.value)


def test_bad_paths_give_one_line_errors(tmp_path):
    with pytest.raises(SlideNotFoundError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty"):
        open_slide(empty)
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 10)
    with pytest.raises(UnsupportedSlideError) as ei:
        open_slide(text)
    assert "notes.svs" in str(ei.value) and "\n" not in str(ei.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(UnsupportedSlideError, match="DICOM"):
        open_slide(folder)
    with pytest.raises(ConfigError, match="unknown slide backend"):
        open_slide(text, backend="bioformats")


def test_truncated_slide_fails_cleanly(synthetic_slide, tmp_path):
    data = synthetic_slide.path.read_bytes()
    bad = tmp_path / "truncated.svs"
    bad.write_bytes(data[: len(data) // 3])
    try:
        s = open_slide(bad)
    except SlideReadError:
        return  # refused at open: fine
    with pytest.raises(SlideReadError), s:  # or refused when the missing tiles are read
        s.read_region((0, 0), 0, s.dimensions)


def test_slides_pickle_to_a_recipe(synthetic_slide):
    with open_slide(synthetic_slide.path, backend="tiffslide", mpp=0.5) as s:
        blob = pickle.dumps(s)
        assert len(blob) < 2000  # a recipe, not pixels
        t = pickle.loads(blob)
        assert t.backend == "tiffslide" and t.mpp == 0.5
        assert np.array_equal(
            t.read_region((0, 0), 0, (64, 64)), s.read_region((0, 0), 0, (64, 64))
        )
        t.close()


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_concurrent_reads_match_serial(synthetic_slide, backend):
    s = open_slide_cached(synthetic_slide.path, backend=backend)
    assert open_slide_cached(synthetic_slide.path, backend=backend) is s
    locs = [(x, y) for x in range(0, 4096, 512) for y in range(0, 3072, 512)]
    serial = [s.read_region(loc, 0, (256, 256)) for loc in locs]
    with ThreadPoolExecutor(4) as ex:
        parallel = list(ex.map(lambda loc: s.read_region(loc, 0, (256, 256)), locs))
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(a, b)


def test_find_and_inspect_slides(synthetic_slide, tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    link = tmp_path / "a.svs"
    link.write_bytes(synthetic_slide.path.read_bytes())
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00garbage")
    found = find_slides(tmp_path)
    assert [p.split("/")[-1] for p in found] == ["a.svs", "broken.tiff"]
    res = inspect_slides([tmp_path, tmp_path / "nope.svs"])
    assert [r.ok for r in res] == [True, False, False]
    assert res[0].info.width == 4096
    assert "broken.tiff" in res[1].error and "nope.svs" in res[2].error


def test_a_folder_of_slide_folders_says_to_pass_them(synthetic_slide, tmp_path):
    """A GDC download keeps each slide in its own folder: the top folder holds no slide
    file, and the error says which folders do (it listed slide suffixes only)."""
    gdc = tmp_path / "gdc"
    for i in range(3):
        (gdc / f"uuid-{i}").mkdir(parents=True)
        (gdc / f"uuid-{i}" / f"S{i}.svs").write_bytes(synthetic_slide.path.read_bytes())
    (gdc / "logs").mkdir()
    (gdc / "logs" / "run.log").write_text("x")
    with pytest.raises(SlideNotFoundError, match=r"gdc: folder holds no slide files; 3 sub-") as e:
        find_slides(gdc)
    assert len(find_slides(sorted(gdc.glob("uuid-*")))) == 3
    # the patterns it suggests name the slides and not the logs folder (gdc/* would take it)
    suggested = str(e.value).split("e.g. ")[1].split()
    assert suggested == [str(gdc / "*" / "*.svs")]
    assert len(find_slides(sorted(x for g in suggested for x in glob.glob(g)))) == 3
