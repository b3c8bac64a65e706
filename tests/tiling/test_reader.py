"""The TIFF tile reader: bit-identical to the slide's own reader, and each TIFF tile decoded
once per run of row-major reads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsimm.slide import open_slide
from wsimm.testing import write_synthetic_slide
from wsimm.tiling import TileSpec, open_tile_reader, plan_grid, read_tile
from wsimm.tiling._grid import _cv2


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    p = tmp_path_factory.mktemp("reader") / "s.svs"
    write_synthetic_slide(p, width=5000, height=3800, seed=4, mpp=0.25, tile_size=240)
    return p


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.37, 1.0, 2.0])
def test_reader_tiles_equal_slide_reads(svs, backend, mpp):
    if backend == "openslide":
        pytest.importorskip("openslide")
    with open_slide(svs, backend=backend) as s:
        _check_parity(s, mpp)


def _check_parity(s, mpp):
    g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=mpp, overlap=0.25))
    r = open_tile_reader(s, g.level)
    assert r is not None
    with r:
        for xy in g.coords[:: max(1, len(g.coords) // 150)]:
            a = read_tile(s, g, tuple(xy))
            b = read_tile(s, g, tuple(xy), reader=r)
            np.testing.assert_array_equal(a, b)
        # partly and wholly outside the image: white, like Slide.read_region
        w, h = s.dimensions
        for loc in [(w - 100, -50), (-300, h - 20), (w + 10, 0)]:
            np.testing.assert_array_equal(
                r.read_region(loc, g.level, (300, 200)), s.read_region(loc, g.level, (300, 200))
            )


def test_each_tiff_tile_decoded_once_on_an_aligned_grid(svs):
    with open_slide(svs) as s, open_tile_reader(s, 0) as r:
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=0.5, tile_px=240))
        for xy in g.coords:
            read_tile(s, g, tuple(xy), reader=r)
        # 480-px level-0 reads on a 240-px TIFF tiling: 4 TIFF tiles per grid tile, no repeats
        assert r.decoded == 4 * len(g.coords)


def test_overlapping_grid_reuses_decoded_tiles(svs):
    with open_slide(svs) as s, open_tile_reader(s, 0) as r:
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=0.25, overlap=0.5))
        for xy in g.coords:
            read_tile(s, g, tuple(xy), reader=r)
        w, h = s.dimensions
        # never more than the number of TIFF tiles in the image
        assert r.decoded <= -(-w // 240) * -(-h // 240)


def test_integer_factor_fast_path_is_the_exact_block_mean(svs):
    if _cv2() is None:
        pytest.skip("opencv not installed")
    with open_slide(svs) as s:
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=0.5))
        for xy in g.coords[:20]:
            region = s.read_region(tuple(xy), g.level, (g.read_size, g.read_size))
            mean = region.reshape(256, 2, 256, 2, 3).astype(np.float64).mean(axis=(1, 3))
            exact = np.floor(mean + 0.5).astype(np.uint8)
            np.testing.assert_array_equal(read_tile(s, g, tuple(xy)), exact)
            # PIL's fixed-point BOX filter (the fractional path) is within 1 of it
            pil = np.asarray(Image.fromarray(region).resize((256, 256), Image.Resampling.BOX))
            assert np.abs(pil.astype(int) - exact).max() <= 1


def test_no_reader_for_files_it_does_not_handle(tmp_path):
    from tests.conftest import shared_slide

    try:
        ndpi = shared_slide("hamamatsu-test3-DAPI-2-387.ndpi")
    except pytest.skip.Exception:
        ndpi = None
    if ndpi is not None:
        with open_slide(ndpi) as s:
            assert open_tile_reader(s, 0) is None  # NDPI: JPEG strips
    # a stripped (untiled) TIFF
    import tifffile

    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, np.full((600, 800, 3), 200, np.uint8), photometric="rgb")
    with open_slide(p, mpp=0.5) as s:
        assert open_tile_reader(s, 0) is None


def test_grid_on_the_file_tiling_reads_single_tiles(svs):
    with open_slide(svs) as s, open_tile_reader(s, 0) as r:
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=0.25, tile_px=240))
        for xy in g.coords:
            np.testing.assert_array_equal(
                read_tile(s, g, tuple(xy), reader=r), read_tile(s, g, tuple(xy))
            )
        assert r.decoded == len(g.coords)


@pytest.mark.parametrize(
    ("mpp", "px", "overlap"),
    [(0.25, 96, 0.0), (0.5, 96, 0.0), (0.37, 96, 0.0), (2.0, 96, 0.0), (0.25, 240, 0.0),
     (0.25, 240, 0.5), (0.5, 240, 0.0)],
)  # fmt: skip
def test_batches_equal_single_tile_reads(svs, mpp, px, overlap):
    """read_tiles fills each batch row in place (no array per tile), and a grid aligned with
    the file's 240-px tiling (0.25 µm/px, 240 px) is decoded straight into the batch: the
    same pixels as read_tile through the slide's own reader, on every path."""
    from wsimm.tiling import read_tiles

    with open_slide(svs) as s:
        spec = TileSpec(mpp=mpp, tile_px=px, overlap=overlap)
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, spec)
        coords = g.coords[:: max(1, len(g.coords) // 70)]
        got = np.concatenate(list(read_tiles(s, g, coords, batch_size=16)))
        want = np.stack([read_tile(s, g, tuple(xy)) for xy in coords])
    assert got.shape == want.shape and len(got) > 20
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_real_aperio_slide_decoded_in_place_equals_its_reader(backend):
    """An Aperio SVS (JPEG, RGB without JFIF, 240-px tiles) on a grid aligned with its
    tiling: every tile is decoded straight into the batch, and the pixels equal the slide
    reader's own."""
    from tests.conftest import shared_slide
    from wsimm.tiling import read_tiles

    if backend == "openslide":
        pytest.importorskip("openslide")
    with open_slide(shared_slide("CMU-1-Small-Region.svs"), backend=backend) as s:
        g = plan_grid(s.dimensions, s.level_downsamples, s.mpp, TileSpec(mpp=s.mpp, tile_px=240))
        with open_tile_reader(s, g.level) as r:
            r.expect(g.coords, 240, 240)
            out = np.empty((240, 240, 3), np.uint8)
            assert r.read_into(tuple(g.coords[0]), out)
            np.testing.assert_array_equal(out, read_tile(s, g, tuple(g.coords[0])))
        got = np.concatenate(list(read_tiles(s, g)))
        want = np.stack([read_tile(s, g, tuple(xy)) for xy in g.coords])
    assert len(want) > 50
    np.testing.assert_array_equal(got, want)
