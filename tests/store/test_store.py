from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsimm.errors import ConfigError, StoreError, StoreFormatError, StoreLockedError
from wsimm.store import export_h5, import_h5, open_store, sanitize_slide_id


def _write(fs, sid, n=10, dim=4, finish=True):
    fs.begin_slide(sid, coords=np.arange(2 * n).reshape(n, 2), tissue_fraction=np.ones(n),
                   tissue_mask=np.ones((3, 3), bool), mask_downsample=32.0,
                   attrs={"tile_px": 256})  # fmt: skip
    fs.begin_features(sid, "enc", n=n, dim=dim, attrs={})
    fs.write_features(sid, "enc", 0, np.full((n, dim), 0.5))
    fs.finish_features(sid, "enc")
    if finish:
        fs.finish_slide(sid)


def test_layout_is_plain_zarr_and_versioned(tmp_path):
    fs = open_store(tmp_path / "c.zarr", "a")
    _write(fs, "a")
    root = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert root.attrs["wsimm"]["encoding-type"] == "wsimm-feature-store"
    assert root["slides/a/coords"].dtype == np.int64
    assert root["slides/a/features/enc"].dtype == np.float16
    assert root["slides/a"].attrs["status"] == "complete"


def test_incomplete_slides_are_invisible(tmp_path):
    fs = open_store(tmp_path / "c.zarr", "a")
    _write(fs, "done")
    _write(fs, "partial", finish=False)
    r = open_store(tmp_path / "c.zarr")
    assert r.slides() == ["done"] and "partial" in r.all_slide_ids()
    with pytest.raises(KeyError, match="incomplete"):
        r.coords("partial")
    assert r.features("done").shape == (10, 4)


def test_version_and_foreign_stores(tmp_path):
    fs = open_store(tmp_path / "c.zarr", "a")
    fs._root.attrs["wsimm"] = {**fs.attrs, "encoding-version": 99}
    with pytest.raises(StoreFormatError, match="version 99"):
        open_store(tmp_path / "c.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_group("x")
    with pytest.raises(StoreFormatError, match="not a wsimm"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="no such feature store"):
        open_store(tmp_path / "missing.zarr")


def test_lock_refuses_a_second_writer(tmp_path):
    fs = open_store(tmp_path / "c.zarr", "a")
    with fs.lock(), pytest.raises(StoreLockedError, match="another wsimm process"), fs.lock():
        pass
    with fs.lock():  # released
        pass


def test_sanitize_ids():
    assert sanitize_slide_id("TCGA-AB 12/../x") == "TCGA-AB_12___x"
    assert sanitize_slide_id("..hidden") == "hidden"
    assert sanitize_slide_id("naïve-slide") == "naïve-slide"
    assert "/" not in sanitize_slide_id("a/b\\c\x00d")
    with pytest.raises(ConfigError):
        sanitize_slide_id("..")


def test_h5_round_trip(tmp_path):
    fs = open_store(tmp_path / "c.zarr", "a")
    _write(fs, "a")
    (f,) = export_h5(tmp_path / "c.zarr", tmp_path / "h5")
    import h5py

    with h5py.File(f) as h:
        assert h["coords"].attrs["patch_size"] == 256
        assert h["features"].shape == (10, 4)
    import_h5(tmp_path / "h5", tmp_path / "d.zarr", encoder="clam")
    d = open_store(tmp_path / "d.zarr")
    assert np.array_equal(d.coords("a"), fs.coords("a"))
    assert np.allclose(d.features("a", "clam"), 0.5)
    with pytest.raises(StoreError, match="--overwrite"):
        import_h5(tmp_path / "h5", tmp_path / "d.zarr", encoder="clam")
