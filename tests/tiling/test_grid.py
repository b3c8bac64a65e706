from __future__ import annotations

import numpy as np
import pytest

from wsimm.errors import ConfigError
from wsimm.tiling import TileSpec, plan_grid, read_tile, tissue_fractions


def test_exact_physical_size_and_level_choice():
    g = plan_grid((100_000, 80_000), (1, 4, 16, 64), 0.25, TileSpec(mpp=0.5))
    assert g.size0 == pytest.approx(512) and g.level == 0 and g.read_size == 512
    g = plan_grid((100_000, 80_000), (1, 4, 16, 64), 0.25, TileSpec(mpp=1.0))
    assert g.level == 1 and g.read_size == 256 and not g.upsampling
    g = plan_grid((2220, 2967), (1.0,), 0.499, TileSpec(mpp=0.5))
    assert g.size0 == pytest.approx(256 * 0.5 / 0.499)
    # tiles stay inside the slide, coordinates are integers on the stride
    assert (g.coords[:, 0] + g.size0 <= 2220 + 1e-6).all()
    assert g.coords.dtype == np.int64
    assert np.array_equal(np.unique(g.coords[:, 0]), np.round(np.arange(8) * g.stride0))


def test_overlap_and_upsampling():
    g = plan_grid((4096, 4096), (1.0,), 0.5, TileSpec(mpp=0.5, overlap=0.5))
    assert g.stride0 == 128 and len(g) == 31 * 31
    g = plan_grid((4096, 4096), (1.0,), 0.5, TileSpec(mpp=0.25))
    assert g.upsampling


def test_tissue_fraction_is_exact_and_filters():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    f = tissue_fractions(mask, 10.0, np.array([[0, 0], [0, 45], [0, 60], [3, 47]]), 10.0)
    assert f.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.3])
    g = plan_grid((100, 100), (1.0,), 1.0, TileSpec(mpp=1.0, tile_px=10, min_tissue=0.5),
                  mask=mask, mask_downsample=10.0)  # fmt: skip
    assert len(g) == 50 and (g.coords[:, 1] < 50).all()


def test_tissue_fractions_by_bands_equal_the_pixel_count():
    # integer boxes: the fraction is a plain pixel count, whatever band the tile falls in
    rng = np.random.default_rng(0)
    mask = rng.random((300, 200)) < 0.4
    xy = np.stack([rng.integers(-5, 200, 400), rng.integers(-5, 300, 400)], axis=1)
    for band_rows in (1, 7, 64, 1000):
        f = tissue_fractions(mask, 1.0, xy, 9.0, band_rows=band_rows)
        for (x, y), got in zip(xy, f, strict=True):
            box = mask[max(0, y) : y + 9, max(0, x) : x + 9]
            assert got == pytest.approx(box.sum() / 81, abs=1e-6)


def test_edge_tiles_reach_past_the_right_and_bottom_edges():
    spec = TileSpec(mpp=1.0, tile_px=256)
    inside = plan_grid((1000, 700), (1.0,), 1.0, spec)
    edge = plan_grid((1000, 700), (1.0,), 1.0, TileSpec(mpp=1.0, tile_px=256, edge_tiles=True))
    assert len(inside) == 3 * 2 and len(edge) == 4 * 3
    assert edge.coords[:, 0].max() == 768 and edge.coords[:, 1].max() == 512  # start < edge
    assert (edge.coords[:, 0] < 1000).all() and (edge.coords[:, 1] < 700).all()
    # exactly divisible: no extra column; with overlap the last tile still reaches the edge
    even = TileSpec(mpp=1.0, tile_px=256, edge_tiles=True)
    assert len(plan_grid((1024, 512), (1.0,), 1.0, even)) == 4 * 2
    g = plan_grid((1000, 256), (1.0,), 1.0,
                  TileSpec(mpp=1.0, tile_px=256, overlap=0.5, edge_tiles=True))  # fmt: skip
    assert g.coords[:, 0].max() + 256 >= 1000 and g.coords[:, 0].max() - 128 + 256 < 1000
    # a slide smaller than one tile gets one padded tile
    assert len(plan_grid((100, 80), (1.0,), 1.0, TileSpec(mpp=1.0, edge_tiles=True))) == 1
    # padding counts as background in the tissue fraction
    mask = np.ones((70, 100), bool)
    g = plan_grid((1000, 700), (1.0,), 1.0, TileSpec(mpp=1.0, tile_px=256, edge_tiles=True,
                  min_tissue=0.0), mask=mask, mask_downsample=10.0)  # fmt: skip
    last = (g.coords[:, 0] == 768) & (g.coords[:, 1] == 512)
    assert g.tissue_fraction[last][0] == pytest.approx((1000 - 768) * (700 - 512) / 256**2)
    # stores tiled before the option compare equal: the key is absent unless on
    assert "edge_tiles" not in spec.to_dict()
    assert TileSpec(edge_tiles=True).to_dict()["edge_tiles"] is True


def test_edge_tiles_on_a_real_slide_are_padded_white(tmp_path):
    from tests.conftest import shared_slide
    from wsimm.pipeline import tile_slides
    from wsimm.slide import open_slide
    from wsimm.store import open_store
    from wsimm.tiling import grid_from_store, read_tiles

    path = shared_slide("CMU-1-Small-Region.svs")
    rep = tile_slides([path], tmp_path / "a.zarr", encoder=None, quiet=True)
    rep2 = tile_slides([path], tmp_path / "b.zarr", encoder=None, quiet=True,
                       spec=TileSpec(edge_tiles=True))  # fmt: skip
    assert not rep.failed and not rep2.failed
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    sid = "CMU-1-Small-Region"
    assert b.slide_attrs(sid)["params"]["edge_tiles"] is True
    assert "edge_tiles" not in a.slide_attrs(sid)["params"]
    ca, cb = a.coords(sid), b.coords(sid)
    assert {tuple(c) for c in ca} < {tuple(c) for c in cb}  # the same grid, plus edge tiles
    w, h = b.slide_attrs(sid)["level0_dims"]
    g = grid_from_store(b, sid)
    past = (cb[:, 0] + g.size0 > w) | (cb[:, 1] + g.size0 > h)
    assert past.sum() >= 2  # tissue at the bottom edge of this slide (about 150 px of it)
    with open_slide(path) as s:
        tiles = np.concatenate(list(read_tiles(s, g, cb[past])))
    for (x, y), t in zip(cb[past], tiles, strict=True):
        inside_w = int((w - x) / g.size0 * 256)
        inside_h = int((h - y) / g.size0 * 256)
        if inside_h < 255:
            assert (t[inside_h + 1 :] == 255).all()  # rows past the bottom: white
        if inside_w < 255:
            assert (t[:, inside_w + 1 :] == 255).all()
        assert (t[: max(1, inside_h - 1), : max(1, inside_w - 1)] < 250).any()  # tissue


def test_tiny_slide_has_no_tiles():
    assert len(plan_grid((16, 16), (1.0,), 0.5, TileSpec())) == 0


def test_bad_specs():
    with pytest.raises(ConfigError):
        TileSpec(overlap=1.0)
    with pytest.raises(ConfigError):
        TileSpec(mpp=0)
    with pytest.raises(ConfigError):
        TileSpec(tile_px=3)


def test_read_tile_resamples_exact_extent(synthetic_slide):
    from wsimm.slide import open_slide

    with open_slide(synthetic_slide.path) as s:
        g = plan_grid(s.dimensions, s.level_downsamples, 0.5, TileSpec(mpp=1.0, tile_px=128))
        assert g.level == 0 and g.read_size == 256
        t = read_tile(s, g, (1024, 1024))
        ref = s.read_region((1024, 1024), 0, (256, 256)).astype(np.float32)
        ref = ref.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
        assert t.shape == (128, 128, 3)
        assert np.abs(t - ref).mean() < 1.0
