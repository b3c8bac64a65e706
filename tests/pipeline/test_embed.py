"""Tiling with a torch encoder, and ``wsimm embed`` adding one to an existing store."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from wsimm.encoders import create_encoder  # noqa: E402
from wsimm.pipeline import embed_store, tile_slides  # noqa: E402
from wsimm.store import open_store  # noqa: E402
from wsimm.testing import write_synthetic_slide  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    enc = create_encoder("timm:resnet18", weights="random", device="cpu")
    p = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(enc.model.state_dict(), p)
    return str(p)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    for i in range(2):
        write_synthetic_slide(d / f"s{i}.svs", width=3072, height=2048, seed=10 + i, mpp=0.5)
    return d


def test_embed_adds_the_same_features_as_tiling_with_the_encoder(slides, weights, tmp_path):
    a = tmp_path / "a.zarr"
    rep = tile_slides([slides], a, encoder="timm:resnet18", weights=weights, quiet=True,
                      batch_size=16)  # fmt: skip
    assert not rep.failed
    b = tmp_path / "b.zarr"
    tile_slides([slides], b, encoder="test_tiny", quiet=True)
    rep = embed_store(b, "timm:resnet18", weights=weights, quiet=True, batch_size=16)
    assert [r.status for r in rep.results] == ["done", "done"]
    fa, fb = open_store(a), open_store(b)
    for sid in ("s0", "s1"):
        assert sorted(fb.encoders(sid)) == ["test_tiny", "timm-resnet18"]
        np.testing.assert_array_equal(fa.coords(sid), fb.coords(sid))
        x, y = fa.features(sid, "timm:resnet18"), fb.features(sid, "timm:resnet18")
        assert x.dtype == np.float16 and x.shape == (len(fa.coords(sid)), 512)
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)
        attrs = fb.feature_attrs(sid, "timm:resnet18")
        assert attrs["weights_fingerprint"].startswith("sha1:")
        assert attrs["cfg"]["embed_dim"] == 512
    # again: nothing to do
    rep = embed_store(b, "timm:resnet18", weights=weights, quiet=True)
    assert [r.status for r in rep.results] == ["skipped", "skipped"]
    # other weights: refused unless --overwrite
    rep = embed_store(b, "timm:resnet18", weights="random", quiet=True)
    assert len(rep.failed) == 2 and "--overwrite" in rep.failed[0].error


def test_embed_cli_reports_a_moved_slide(slides, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(slides, moved)
    store = tmp_path / "c.zarr"
    tile_slides([moved], store, encoder="none", quiet=True)
    shutil.move(moved, tmp_path / "elsewhere")
    cmd = [sys.executable, "-m", "wsimm_cli.main", "embed", str(store), "--encoder", "mean_rgb",
           "--quiet"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1 and "--slides-dir" in p.stderr
    p = subprocess.run([*cmd, "--slides-dir", str(tmp_path / "elsewhere")], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert open_store(store).encoders("s0") == ["mean_rgb"]
