"""Issue 23 points 4, 5 and 7: ``export-h5 --layout clam|trident|stamp`` writes each peer's tree
and attribute meanings, every layout imports back with the same tile footprint, STAMP files
(µm coordinates, ``feats``) import with ``--slides-dir``, and a found slide is attached.

The store is a real one: a pyramidal synthetic slide (0.25 µm/px) tiled at 1 µm/px, so tiles are
read from pyramid level 1 (downsample 4), the case where CLAM's ``patch_size`` (pixels of
``patch_level``) and TRIDENT's (target pixels) differ. The peers' readers are not installed
here: their documented rules (CLAM: footprint = ``patch_size`` x ``downsample``; STAMP:
``coords`` in µm when ``unit == "um"``, µm/px = ``tile_size_um / tile_size_px``, no root
``encoder`` attribute without ``feat_type``) are restated in the tests."""

from __future__ import annotations

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

from wsimm.errors import ConfigError, StoreError, WsimmWarning  # noqa: E402
from wsimm.store import export_h5, import_h5, open_store  # noqa: E402
from wsimm.tiling import TileSpec  # noqa: E402


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    from wsimm.pipeline import tile_slides
    from wsimm.testing import write_synthetic_slide

    d = tmp_path_factory.mktemp("layouts")
    write_synthetic_slide(d / "slides" / "pyr.svs", width=6144, height=4096, seed=4, mpp=0.25)
    rep = tile_slides([d / "slides"], d / "s.zarr", spec=TileSpec(mpp=1.0, tile_px=64),
                      encoder="test_tiny", quiet=True)  # fmt: skip
    assert not rep.failed
    fs = open_store(d / "s.zarr")
    a = fs.slide_attrs("pyr")
    assert a["read_level"] == 1 and a["read_downsample"] == pytest.approx(4.0)
    return d, fs


def _same_geometry(a, b):
    for key in ("tile_px", "tile_size0", "stride0", "mpp", "target_mpp", "level0_dims"):
        assert b[key] == pytest.approx(a[key], abs=1.0 if key != "mpp" else 1e-6), key


def test_clam_layout(tiled, tmp_path):
    d, fs = tiled
    files = export_h5(d / "s.zarr", tmp_path / "clam", layout="clam")
    names = sorted(str(p.relative_to(tmp_path / "clam")) for p in files)
    assert names == ["h5_files/pyr.h5", "patches/pyr.h5", "pt_files/pyr.pt"]
    a = fs.slide_attrs("pyr")
    with h5py.File(tmp_path / "clam" / "h5_files" / "pyr.h5") as f:
        c = f["coords"]
        assert c.attrs["patch_level"] == 1
        # CLAM's footprint rule: patch_size pixels of patch_level, times its downsample
        footprint = c.attrs["patch_size"] * c.attrs["downsample"][0]
        assert abs(footprint - a["tile_size0"]) <= 1.0
        assert list(c.attrs["level_dim"]) == [6144 // 4, 4096 // 4]
        assert np.array_equal(c[:], fs.coords("pyr"))
        feats = f["features"][:]
    pt = torch.load(tmp_path / "clam" / "pt_files" / "pyr.pt")
    assert torch.equal(pt, torch.from_numpy(feats)) and pt.dtype == torch.float32
    assert np.allclose(feats, fs.features("pyr", "test_tiny").astype(np.float32))
    (sid,) = import_h5(tmp_path / "clam" / "h5_files", tmp_path / "b.zarr", encoder="e")
    b = open_store(tmp_path / "b.zarr").slide_attrs(sid)
    assert abs(b["tile_size0"] - a["tile_size0"]) <= 1.0 and b["read_level"] == 1
    assert b["stride0"] == pytest.approx(a["stride0"], abs=1.0)


def test_trident_layout(tiled, tmp_path):
    d, fs = tiled
    files = export_h5(d / "s.zarr", tmp_path / "tri", layout="trident")
    names = sorted(str(p.relative_to(tmp_path / "tri")) for p in files)
    assert names == ["10x_64px_0px_overlap/features_test_tiny/pyr.h5",
                     "10x_64px_0px_overlap/patches/pyr_patches.h5"]  # fmt: skip
    with h5py.File(tmp_path / "tri" / "10x_64px_0px_overlap" / "patches" / "pyr_patches.h5") as f:
        c = f["coords"].attrs
        assert c["patch_size"] == 64 and c["level0_magnification"] == pytest.approx(40)
        assert c["target_magnification"] == pytest.approx(10)
        assert c["level0_width"] == 6144 and c["level0_height"] == 4096 and c["overlap"] == 0
    (feat_file,) = [p for p in files if p.parent.name == "features_test_tiny"]
    import_h5(feat_file.parent, tmp_path / "b.zarr", encoder="e")
    _same_geometry(fs.slide_attrs("pyr"), open_store(tmp_path / "b.zarr").slide_attrs("pyr"))


def test_stamp_layout_and_import(tiled, tmp_path):
    d, fs = tiled
    (f,) = export_h5(d / "s.zarr", tmp_path / "stamp", layout="stamp")
    a = fs.slide_attrs("pyr")
    with h5py.File(f) as h:
        assert set(h) == {"feats", "coords"}
        assert h.attrs["unit"] == "um" and h.attrs["feat_type"] == "tile"
        assert "encoder" not in h.attrs  # STAMP would read it as a slide-level file
        # STAMP's rule: µm/px of the tiles = tile_size_um / tile_size_px
        assert h.attrs["tile_size_um"] / h.attrs["tile_size_px"] == pytest.approx(1.0, rel=1e-3)
        assert np.allclose(h["coords"][:], fs.coords("pyr") * 0.25)
    with pytest.raises(StoreError, match="--slides-dir"):
        import_h5(f, tmp_path / "x.zarr", encoder="e")
    assert not (tmp_path / "x.zarr").exists()  # a refused import leaves no empty store
    (sid,) = import_h5(f, tmp_path / "b.zarr", encoder="e", slides_dir=d / "slides")
    b = open_store(tmp_path / "b.zarr")
    _same_geometry(a, b.slide_attrs(sid))
    assert np.abs(b.coords(sid) - fs.coords("pyr")).max() <= 1
    assert b.slide_attrs(sid)["source"] == str(d / "slides" / "pyr.svs")  # attached


def test_stamp1_files_on_the_224_grid(tiled, tmp_path):
    """STAMP 1 wrote coordinates on a 224-px grid standing for 256 µm tiles."""
    d, _ = tiled
    xy = np.array([(x * 224, y * 224) for y in range(3) for x in range(4)], np.float32)
    with h5py.File(tmp_path / "pyr.h5", "w") as h:
        h["coords"] = xy
        h["feats"] = np.ones((len(xy), 8), np.float16)
    (sid,) = import_h5(tmp_path / "pyr.h5", tmp_path / "s.zarr", encoder="ctp",
                       slides_dir=d / "slides")  # fmt: skip
    a = open_store(tmp_path / "s.zarr").slide_attrs(sid)
    assert a["tile_size0"] == pytest.approx(256 / 0.25) and a["stride0"] == pytest.approx(1024)
    assert a["tile_px"] == 224 and a["target_mpp"] == pytest.approx(256 / 224)


def test_bad_layout_and_missing_features(tiled, tmp_path):
    d, _ = tiled
    with pytest.raises(ConfigError, match="--layout must be one of"):
        export_h5(d / "s.zarr", tmp_path / "x", layout="qupath")
    from wsimm.pipeline import tile_slides

    tile_slides([d / "slides"], tmp_path / "c.zarr", spec=TileSpec(mpp=1.0, tile_px=64),
                encoder=None, quiet=True)  # fmt: skip
    with pytest.raises(StoreError, match="needs one encoder's features"):
        export_h5(tmp_path / "c.zarr", tmp_path / "y", layout="clam")
    assert export_h5(tmp_path / "c.zarr", tmp_path / "z")  # coords alone: the wsimm layout


@pytest.mark.parametrize("layout", ["clam", "trident", "stamp"])
def test_imported_slides_embed_the_same_tiles(tiled, tmp_path, layout):
    """``wsimm embed`` on a store imported with --slides-dir reads exactly the tiles the
    original store was embedded from (it failed with KeyError 'read_downsample')."""
    from wsimm.pipeline import embed_store

    d, fs = tiled
    out = tmp_path / layout
    export_h5(d / "s.zarr", out, layout=layout)
    src = {"clam": out / "h5_files", "stamp": out}.get(layout) or next(out.glob("*/features_*"))
    (sid,) = import_h5(src, tmp_path / "b.zarr", encoder="peer", slides_dir=d / "slides")
    b = open_store(tmp_path / "b.zarr")
    assert b.slide_attrs(sid)["read_level"] == 1
    assert b.slide_attrs(sid)["read_downsample"] == pytest.approx(4.0)
    rep = embed_store(tmp_path / "b.zarr", encoder="test_tiny", quiet=True)
    assert not rep.failed
    again = open_store(tmp_path / "b.zarr").features(sid, "test_tiny").astype(np.float32)
    assert np.allclose(again, fs.features("pyr", "test_tiny").astype(np.float32), atol=2e-3)


def test_tile_names_instead_of_coords(tiled, tmp_path):
    """KatherLab-style files: ``features`` with tile file names in ``metadata`` (e.g.
    ``0_0_1_506.jpg``: the last two numbers are the tile's column and row) and the tile size
    in µm; or names holding level-0 pixels. Both import with the original geometry."""
    d, fs = tiled
    a, xy = fs.slide_attrs("pyr"), fs.coords("pyr")
    feats = fs.features("pyr", "test_tiny").astype(np.float32)
    step = a["stride0"]  # 256 level-0 px = 64 µm
    grid = [f"0_0_{x // step:.0f}_{y // step:.0f}.jpg".encode() for x, y in xy]
    with h5py.File(tmp_path / "pyr.h5", "w") as h:
        h["features"] = feats
        h["metadata"] = grid
        h.attrs.update({"tile_size_um": 64.0, "tile_size_px": 64})
    with pytest.warns(WsimmWarning, match="grid indices x 64 µm"):
        (sid,) = import_h5(tmp_path / "pyr.h5", tmp_path / "g.zarr", encoder="e",
                           slides_dir=d / "slides")  # fmt: skip
    g = open_store(tmp_path / "g.zarr")
    _same_geometry(a, g.slide_attrs(sid))
    assert np.abs(g.coords(sid) - xy).max() <= 1

    px = tmp_path / "px"
    px.mkdir()
    with h5py.File(px / "pyr.h5", "w") as h:
        h["features"] = feats
        h["tile_names"] = [f"pyr_({x},{y}).png" for x, y in xy]
        h.attrs.update({"patch_size": 64, "patch_size_level0": 256})
    with pytest.warns(WsimmWarning, match="level-0 px"):
        (sid,) = import_h5(px / "pyr.h5", tmp_path / "p.zarr", encoder="e")
    b = open_store(tmp_path / "p.zarr")
    assert np.array_equal(b.coords(sid), xy) and b.slide_attrs(sid)["tile_size0"] == 256

    with h5py.File(px / "bad.h5", "w") as h:
        h["features"] = feats[:2]
        h["metadata"] = [b"tile.jpg", b"other.jpg"]
    with pytest.raises(StoreError, match="no x, y numbers"):
        import_h5(px / "bad.h5", tmp_path / "x.zarr", encoder="e")
    assert not (tmp_path / "x.zarr").exists()
