"""Synthetic slides' texture atlases are cached on disk: a second process loads the same
arrays, a damaged cache file is rendered again, and a cache folder that cannot be written only
costs the render."""

from __future__ import annotations

import numpy as np

from wsimm.testing import _slide


def test_atlas_cache_round_trip_and_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(_slide, "_ATLAS_PX", 256)  # a small atlas: the rules, not the cost
    monkeypatch.setenv("WSIMM_CACHE", str(tmp_path / "cache"))
    _slide._level0_atlases.cache_clear()
    try:
        first = _slide._level0_atlases(0.5)
        assert first[0].shape == (256, 256, 3)
        (f,) = (tmp_path / "cache").glob("atlas-0.5-256-*.npz")
        _slide._level0_atlases.cache_clear()
        again = _slide._level0_atlases(0.5)  # from disk
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        assert np.array_equal(first[0], _slide._render_atlases(0.5)[0])  # what a render gives
        f.write_bytes(b"not an npz")
        _slide._level0_atlases.cache_clear()
        rendered = _slide._level0_atlases(0.5)
        assert all(np.array_equal(a, b) for a, b in zip(first, rendered, strict=True))
        monkeypatch.setenv("WSIMM_CACHE", str(f))  # a file where the folder should be
        _slide._level0_atlases.cache_clear()
        assert np.array_equal(_slide._level0_atlases(0.5)[1], first[1])
    finally:
        _slide._level0_atlases.cache_clear()
