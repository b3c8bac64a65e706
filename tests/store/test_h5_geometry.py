"""Issue 23 points 1, 3 and 7: h5 files from wsimm, CLAM and TRIDENT import with their tile
geometry (tile footprint, grid step, µm/px, slide size), one file imports as well as a folder,
an empty slide is skipped with a warning, and a synthetic tiled store survives export ->
import with the geometry the heatmap needs. Fixtures are written from the documented formats."""

from __future__ import annotations

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from wsimm.errors import WsimmWarning  # noqa: E402
from wsimm.store import export_h5, import_h5, open_store  # noqa: E402
from wsimm.testing import bags_to_store, make_mil_cohort  # noqa: E402


def _h5(path, coords, attrs, dim=8):
    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        d.attrs.update(attrs)
        f.create_dataset("features", data=np.ones((len(d), dim), np.float32))
    return path


def _grid(step, nx=4, ny=3):
    return [(x * step, y * step) for y in range(ny) for x in range(nx)]


def test_trident_file_keeps_its_level0_footprint_and_mpp(tmp_path):
    # TRIDENT on an NDPI: 256 px tiles at 20x from a 40x slide cover 512 level-0 px
    attrs = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
             "target_magnification": 20, "level0_width": 5000, "level0_height": 4000,
             "overlap": 0}  # fmt: skip
    f = _h5(tmp_path / "ndpi_slide.h5", _grid(512), attrs)
    (sid,) = import_h5(f, tmp_path / "s.zarr", encoder="uni")  # one file, not a folder
    a = open_store(tmp_path / "s.zarr").slide_attrs(sid)
    assert a["tile_size0"] == 512 and a["stride0"] == 512 and a["tile_px"] == 256
    assert a["mpp"] == pytest.approx(0.25) and a["target_mpp"] == pytest.approx(0.5)
    assert a["level0_dims"] == [5000, 4000]


def test_clam_file_at_level_one_uses_its_downsample(tmp_path):
    attrs = {"patch_size": 256, "patch_level": 1, "downsample": [4.0, 4.0],
             "downsampled_level_dim": [1000, 800], "level_dim": [1000, 800]}  # fmt: skip
    f = _h5(tmp_path / "clam.h5", _grid(1024), attrs)
    (sid,) = import_h5(tmp_path, tmp_path / "s.zarr", encoder="r50")
    a = open_store(tmp_path / "s.zarr").slide_attrs(sid)
    assert f.exists() and a["tile_size0"] == 1024 and a["stride0"] == 1024
    assert a["read_level"] == 1 and a["level0_dims"] == [4 * 1024, 3 * 1024]


def test_clam_features_without_attributes_take_the_patches_file_beside_them(tmp_path):
    """CLAM's extract_features_fp.py writes h5_files/<slide>.h5 with no attributes; the tiling
    is in patches/<slide>.h5 of the same tree (here level 1, 25% overlap: the grid step alone
    would give a 768 px footprint, and level 0)."""
    attrs = {"patch_size": 256, "patch_level": 1, "downsample": [4.0, 4.0],
             "level_dim": [1000, 800]}  # fmt: skip
    (tmp_path / "patches").mkdir()
    (tmp_path / "h5_files").mkdir()
    _h5(tmp_path / "patches" / "sl.h5", _grid(768), attrs)
    _h5(tmp_path / "h5_files" / "sl.h5", _grid(768), {})
    (sid,) = import_h5(tmp_path / "h5_files", tmp_path / "s.zarr", encoder="r50")
    a = open_store(tmp_path / "s.zarr").slide_attrs(sid)
    assert a["tile_size0"] == 1024 and a["stride0"] == 768 and a["read_level"] == 1
    assert a["read_downsample"] == 4.0


def test_overlapping_grid_gives_the_stride_not_the_tile(tmp_path):
    _h5(tmp_path / "ov.h5", _grid(192), {"patch_size": 256, "patch_level": 0})
    (sid,) = import_h5(tmp_path, tmp_path / "s.zarr", encoder="e")
    a = open_store(tmp_path / "s.zarr").slide_attrs(sid)
    assert a["tile_size0"] == 256 and a["stride0"] == 192 and a["stride_px"] == 192


def test_empty_slide_is_skipped_with_a_warning(tmp_path):
    _h5(tmp_path / "empty.h5", np.zeros((0, 2)), {"patch_size": 256})
    _h5(tmp_path / "full.h5", _grid(256), {"patch_size": 256})
    with pytest.warns(WsimmWarning, match="empty.h5: no tiles"):
        ids = import_h5(tmp_path, tmp_path / "s.zarr", encoder="e")
    assert ids == ["full"] and open_store(tmp_path / "s.zarr").slides() == ["full"]


def test_store_round_trip_keeps_the_geometry(tmp_path):
    c = make_mil_cohort(4, seed=0, tiles_per_slide=(20, 30), feature_dim=8)
    bags_to_store(c.bags, tmp_path / "a.zarr")
    export_h5(tmp_path / "a.zarr", tmp_path / "h5")
    import_h5(tmp_path / "h5", tmp_path / "b.zarr", encoder="synthetic")
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    for sid in a.slides():
        x, y = a.slide_attrs(sid), b.slide_attrs(sid)
        for key in ("tile_px", "tile_size0", "stride0", "mpp", "target_mpp", "level0_dims"):
            assert y[key] == pytest.approx(x[key]), (sid, key)
        assert np.array_equal(a.coords(sid), b.coords(sid))


def test_read_downsample_of_slides_imported_before_it_was_recorded():
    """Stores imported by earlier versions lack ``read_downsample``: tiling's re-reads and
    the CLAM export derive it the same way (level 0: 1; else footprint / tile pixels)."""
    from wsimm.store import read_downsample

    assert read_downsample({"read_downsample": 4.0, "read_level": 1}) == 4.0
    assert read_downsample({"read_level": 0, "tile_size0": 512, "tile_px": 256}) == 1.0
    assert read_downsample({"read_level": 1, "tile_size0": 1024.0, "tile_px": 256}) == 4.0
