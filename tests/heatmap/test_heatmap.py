"""Heatmaps (issue 7): scores that find the tumour, and files that viewers open.

The acceptance cohort: 24 synthetic slides, half with tumour (30% of the tissue) and half
without, tiled with the ``test_tiny`` encoder; ABMIL learns tumour vs normal with 3 patient-level
folds, and each tumour slide's heatmap comes from the fold that held it out. The per-tile
attention must separate tumour tiles (>= half the tile on the tumour mask) from the others with
AUC >= 0.9.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from sklearn.metrics import roc_auc_score

from wsimm.errors import ConfigError, DataError
from wsimm.heatmap import (
    ScoreField,
    export,
    make_heatmaps,
    parse_formats,
    render,
    smooth_scores,
    tile_scores,
)
from wsimm.store import open_store
from wsimm.testing import bags_to_store, make_mil_cohort, write_synthetic_slide
from wsimm.tiling import TileSpec, tissue_fractions
from wsimm.train import train


@pytest.fixture(scope="module")
def tumour_run(tmp_path_factory):
    from wsimm.pipeline import tile_slides

    d = tmp_path_factory.mktemp("heatmap")
    truth, rows = {}, []
    for i in range(24):
        sid = f"S{i:02d}"
        truth[sid] = write_synthetic_slide(
            d / "slides" / f"{sid}.svs",
            width=2048,
            height=1536,
            seed=100 + i,
            mpp=0.5,
            tumour_fraction=0.3 if i % 2 == 0 else 0.0,
        )
        rows.append((f"P{i:02d}", sid, "tumour" if i % 2 == 0 else "normal"))
    pd.DataFrame(rows, columns=["patient_id", "slide_id", "label"]).to_csv(
        d / "labels.csv", index=False
    )
    rep = tile_slides(
        [d / "slides"],
        d / "s.zarr",
        spec=TileSpec(mpp=0.5, tile_px=64),
        quiet=True,
        encoder="test_tiny",
    )
    assert not rep.failed
    res = train(store=str(d / "s.zarr"), labels=str(d / "labels.csv"), task="grade",
                label_col="label", out=str(d / "run"), model="abmil", folds=3, epochs=20,
                quiet=True, seed=0)  # fmt: skip
    assert not res.failed
    return d, truth


def test_attention_heatmap_finds_the_tumour(tumour_run):
    d, truth = tumour_run
    rep = make_heatmaps(d / "run", d / "s.zarr", d / "hm", formats="geojson", quiet=True)
    assert not rep.failed and len(rep.results) == 24
    splits = pd.read_csv(d / "run" / "splits.csv")
    fs = open_store(d / "s.zarr")
    aucs, pct, labels = [], [], []
    for r in rep.results:
        sid = r["slide_id"]
        pid = f"P{sid[1:]}"
        # out-of-fold: the fold whose test set holds the patient drew the heatmap
        test_fold = splits.loc[(splits.patient_id == pid) & (splits.set == "test"), "fold"]
        assert r["folds"] == [int(test_fold.iloc[0])]
        s = truth[sid]
        if not s.tumour.any():
            continue
        tiles = pd.read_csv(d / "hm" / f"{sid}_tiles.csv")
        size0 = float(fs.slide_attrs(sid)["tile_size0"])
        frac = tissue_fractions(s.tumour, s.mask_downsample, tiles[["x", "y"]].to_numpy(), size0)
        y = frac >= 0.5
        assert 0.1 < y.mean() < 0.6
        aucs.append(roc_auc_score(y, tiles["attention"]))
        pct += tiles["attention_percentile"].tolist()
        labels += y.tolist()
    assert len(aucs) == 12
    assert min(aucs) >= 0.85, aucs
    assert np.mean(aucs) >= 0.9, aucs
    assert roc_auc_score(labels, pct) >= 0.9


def test_geojson_is_a_qupath_feature_collection_on_the_tiles(tumour_run):
    d, _ = tumour_run
    ts = tile_scores(d / "run", d / "s.zarr", "S00")
    files = export(ts, d / "one", "geojson", top_k=5)
    doc = json.loads(files["geojson"].read_text())
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert len(feats) == len(ts)
    ids = set()
    classes = {"wsimm top": [], "wsimm bottom": []}
    for i, f in enumerate(feats):
        assert f["type"] == "Feature"
        ids.add(f["id"])
        p = f["properties"]
        assert p["objectType"] == "detection"
        assert set(p["measurements"]) == {"attention", "attention percentile"}
        assert p["measurements"]["attention"] == pytest.approx(float(ts.scores["attention"][i]))
        g = f["geometry"]
        assert g["type"] == "Polygon"
        ring = np.asarray(g["coordinates"][0])
        assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])
        # the polygon is the tile, in level-0 pixels
        assert np.allclose(ring.min(0), ts.coords[i], atol=0.01)
        assert np.allclose(ring.max(0) - ring.min(0), ts.tile_size0, atol=0.01)
        if "classification" in p:
            classes[p["classification"]["name"]].append(p["measurements"]["attention percentile"])
    assert len(ids) == len(feats)
    assert len(classes["wsimm top"]) == 5 and len(classes["wsimm bottom"]) == 5
    assert min(classes["wsimm top"]) > max(classes["wsimm bottom"])
    # QuPath's convention for percentiles: 0-100
    pcts = [f["properties"]["measurements"]["attention percentile"] for f in feats]
    assert max(pcts) == pytest.approx(100.0) and min(pcts) > 0


def test_overlay_tiff_opens_in_openslide_and_tiffslide(tumour_run):
    openslide = pytest.importorskip("openslide")
    import tiffslide

    d, _ = tumour_run
    ts = tile_scores(d / "run", d / "s.zarr", "S02")
    files = export(ts, d / "tiff", "tiff", tiff_downsample=4)
    w0, h0 = ts.dims
    for o in (openslide.OpenSlide(str(files["tiff"])), tiffslide.TiffSlide(str(files["tiff"]))):
        dims = o.level_dimensions
        assert dims[0] == (math.ceil(w0 / 4), math.ceil(h0 / 4))
        assert abs(dims[0][0] / dims[0][1] - w0 / h0) < 0.01  # proportional to the slide
        assert len(dims) >= 2
        mpp_key = "openslide.mpp-x" if "openslide.mpp-x" in o.properties else "tiffslide.mpp-x"
        assert float(o.properties[mpp_key]) == pytest.approx(ts.mpp * 4, rel=1e-3)
        img = np.asarray(o.read_region((0, 0), 0, dims[0]))
        assert img.shape[2] == 4
        # transparent off tissue, opaque over the scored tiles
        assert img[0, 0, 3] == 0
        x, y = (ts.coords[np.argmax(ts.scores["attention"])] + ts.tile_size0 / 2) / 4
        top = img[int(y), int(x)]
        # the least attended tile whose centre is on tissue (off the mask is transparent)
        ctr = ((ts.coords + ts.tile_size0 / 2) / ts.mask_downsample).astype(int)
        on = ts.tissue_mask[ctr[:, 1], ctr[:, 0]] > 0
        low = np.flatnonzero(on)[np.argmin(ts.scores["attention"][on])]
        x, y = (ts.coords[low] + ts.tile_size0 / 2) / 4
        bottom = img[int(y), int(x)]
        assert top[3] == 255 and bottom[3] == 255
        assert top[0] > bottom[0] and bottom[2] > top[2]  # viridis: yellow on top, purple at bottom
        o.close()


def test_default_overlay_tiff_is_the_slide_at_level_zero(tumour_run):
    """By default the TIFF's level 0 is the slide's level 0: same size, same µm/px, classic
    TIFF; every pixel equals the score field rendered directly at full resolution."""
    import tifffile

    d, _ = tumour_run
    ts = tile_scores(d / "run", d / "s.zarr", "S02")
    files = export(ts, d / "full", "tiff")
    w0, h0 = ts.dims
    with open(files["tiff"], "rb") as f:
        assert f.read(4) == b"II*\x00"
    with tifffile.TiffFile(files["tiff"]) as tf:
        page = tf.pages[0]
        assert (page.imagewidth, page.imagelength) == (w0, h0)
        xres = page.tags["XResolution"].value
        assert 1e4 / (xres[0] / xres[1]) == pytest.approx(ts.mpp, rel=1e-6)
        img = page.asarray()
    with openslide_or_skip(files["tiff"]) as o:
        assert o.level_dimensions[0] == (w0, h0)
    x, y = (ts.coords[np.argmax(ts.scores["attention"])] + ts.tile_size0 / 2).astype(int)
    assert img[y, x, 3] == 255


def openslide_or_skip(path):
    openslide = pytest.importorskip("openslide")
    return openslide.OpenSlide(str(path))


def test_uniform_tiles_equal_rendered_ones(tmp_path):
    """The TIFF writer skips rendering uniform tiles; its pixels must equal the field rendered
    and coloured directly, with overlapping tiles, a partial tissue mask, tiles crossing the
    TIFF's tile edges and empty areas."""
    import tifffile

    from wsimm.heatmap import colorize, write_overlay_tiff

    rng = np.random.default_rng(3)
    xy = np.array([(x, y) for y in range(0, 1100, 512) for x in range(0, 1800, 512)], float)
    xy = np.vstack([xy, [[300, 300], [1300, 1200]]])  # one overlapping, one crossing tile edges
    vals = rng.random(len(xy))
    mask = np.ones((50, 60), bool)
    mask[10:25, 30:44] = False
    field = ScoreField(xy, 512.0, vals, tissue=mask, tissue_downsample=32)
    fast = [
        field.uniform(x, y, 256, 256, 1.0) for y in range(0, 1600, 256) for x in range(0, 1900, 256)
    ]
    values = [u for u in fast if u is not None and not np.isnan(u)]
    assert len(values) >= 10 and fast.count(None) >= 5  # both paths are taken
    for ds in (1.0, 3.0):
        sizes = write_overlay_tiff(field, tmp_path / "u.tiff", dims=(1900, 1600), mpp=0.5,
                                   downsample=ds)  # fmt: skip
        with tifffile.TiffFile(tmp_path / "u.tiff") as tf:
            for page, (w, h) in zip(tf.pages, sizes, strict=True):
                sx, sy = 1900 / w, 1600 / h
                want = colorize(field.region(0, 0, w, h, (sx, sy)))
                assert np.array_equal(page.asarray(), want), (ds, w, h)


def test_overlay_tiff_spans_the_slide_extent_exactly(tmp_path):
    """Level 0 of the overlay covers the slide's extent to the pixel on each axis (QuPath
    stretches an overlay over the slide), and a small pyramid is a classic TIFF."""
    import tifffile

    from wsimm.heatmap import write_overlay_tiff

    w0, h0 = 1000, 700  # not multiples of the downsample
    field = ScoreField(np.array([[900, 0], [0, 600]]), 100.0, np.array([1.0, 0.5]))
    sizes = write_overlay_tiff(field, tmp_path / "o.tiff", dims=(w0, h0), mpp=0.5,
                               downsample=16)  # fmt: skip
    assert sizes[0] == (63, 44)
    with open(tmp_path / "o.tiff", "rb") as f:
        assert f.read(4) == b"II*\x00"  # classic TIFF, not BigTIFF
    with tifffile.TiffFile(tmp_path / "o.tiff") as tf:
        page = tf.pages[0]
        img = page.asarray()
        xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
    sx, sy = w0 / 63, h0 / 44
    # µm/px per axis: the image's physical size is the slide's
    assert 63 * 1e4 / (xres[0] / xres[1]) == pytest.approx(w0 * 0.5)
    assert 44 * 1e4 / (yres[0] / yres[1]) == pytest.approx(h0 * 0.5)
    # the right-edge tile [900, 1000) x [0, 100): exactly the pixels whose centres fall in it
    cols = [j for j in range(63) if 900 <= (j + 0.5) * sx < 1000]
    rows = [i for i in range(44) if (i + 0.5) * sy < 100]
    opaque = np.argwhere(img[..., 3] > 0)
    top = opaque[opaque[:, 0] < 20]
    assert set(top[:, 1]) == set(cols) and set(top[:, 0]) == set(rows)
    assert cols[-1] == 62  # the last column belongs to the slide's last 100 px


def test_png_and_gallery(tumour_run):
    from PIL import Image

    d, _ = tumour_run
    ts = tile_scores(d / "run", d / "s.zarr", "S04")
    files = export(ts, d / "png", "png,gallery", top_k=4, max_px=512)
    with Image.open(files["png"]) as png:
        assert png.format == "PNG" and png.width > 512 and png.height > 300
    with Image.open(files["gallery"]) as gal:
        assert gal.width >= 4 * 160 and gal.height > 2 * 160
    rgba = render(ts, max_px=512)
    assert rgba.shape == (384, 512, 4)
    assert 0 < (rgba[..., 3] > 0).mean() < 1


def test_dense_overlap_rescores_more_tiles(tumour_run):
    d, _ = tumour_run
    base = tile_scores(d / "run", d / "s.zarr", "S06")
    dense = tile_scores(d / "run", d / "s.zarr", "S06", overlap=0.5)
    assert dense.stride0 == pytest.approx(base.stride0 / 2)
    assert 2.5 * len(base) < len(dense) < 4.5 * len(base)
    # the dense grid contains the stored grid; the same tiles get about the same attention rank
    key = {tuple(c): i for i, c in enumerate(dense.coords.tolist())}
    shared = [(i, key[tuple(c)]) for i, c in enumerate(base.coords.tolist()) if tuple(c) in key]
    assert len(shared) > 0.9 * len(base)
    a = base.percentile()[[i for i, _ in shared]]
    b = dense.percentile()[[j for _, j in shared]]
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_moved_slide_file_is_a_clear_error(tumour_run, tmp_path):
    d, _ = tumour_run
    ts = tile_scores(d / "run", d / "s.zarr", "S08")
    ts.source = str(tmp_path / "gone" / "S08.svs")
    with pytest.raises(DataError, match="--slides-dir"):
        export(ts, tmp_path / "out", "png")
    assert not list((tmp_path / "out").glob("*.png"))
    files = export(ts, tmp_path / "out", "png", slides_dir=d / "slides", max_px=256)
    assert files["png"].is_file()


def test_cli_heatmap(tumour_run):
    from typer.testing import CliRunner

    from wsimm_cli.main import app

    d, _ = tumour_run
    r = CliRunner().invoke(app, ["heatmap", "--run", str(d / "run"), "--store", str(d / "s.zarr"),
                                 "--out", str(d / "cli"), "--slide", "S10", "--slide", "S11",
                                 "--format", "tiff,geojson", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert {p.name for p in (d / "cli").iterdir()} == {
        "S10.tiff", "S10.geojson", "S10_tiles.csv", "S11.tiff", "S11.geojson", "S11_tiles.csv",
        "heatmaps.json",
    }  # fmt: skip
    r = CliRunner().invoke(app, ["heatmap", "--run", str(d / "run"), "--store", str(d / "s.zarr"),
                                 "--out", str(d / "cli"), "--format", "pdf"])  # fmt: skip
    assert r.exit_code == 1 and "error: --format pdf" in r.output
    r = CliRunner().invoke(app, ["heatmap", "--run", str(d / "nope"), "--store", str(d / "s.zarr"),
                                 "--out", str(d / "cli")])  # fmt: skip
    assert r.exit_code == 1 and "not a wsimm run directory" in r.output
    # options every slide would fail on alike are one error before anything is written (they
    # were one error per slide, after an empty output folder was made)
    for extra, said in (
        (["--fold", "7"], "--fold must be auto, all or one of the run's folds [0, 1, 2]"),
        (["--scale", "loud"], "--scale must be one of auto, percentile, signed, raw"),
        (["--slides-dir", str(d / "moved")], "no such folder"),
    ):
        out = d / f"cli_{extra[0][2:]}"
        r = CliRunner().invoke(app, ["heatmap", "--run", str(d / "run"), "--store",
                                     str(d / "s.zarr"), "--out", str(out), *extra])  # fmt: skip
        assert r.exit_code == 1 and said in r.output and r.output.count("error:") == 1, r.output
        assert not out.exists()


# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cox_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm_cox")
    c = make_mil_cohort(40, task="survival", seed=3, feature_dim=16, tiles_per_slide=(30, 60))
    bags_to_store(c.bags, d / "s.zarr")
    c.labels.to_csv(d / "labels.csv", index=False)
    train(store=str(d / "s.zarr"), labels=str(d / "labels.csv"), task="survival",
          out=str(d / "run"), model="abmil", survival_loss="cox", folds=2, epochs=3,
          quiet=True)  # fmt: skip
    return d, c


def test_risk_contributions_add_up_to_the_cox_risk(cox_run):
    from wsimm.train import load_run

    d, c = cox_run
    run = load_run(d / "run")
    sid = sorted(c.bags)[0]
    ts = tile_scores(run, d / "s.zarr", sid, fold="all")
    assert ts.primary == "contribution" and set(ts.scores) == {"attention", "contribution"}
    bias = np.mean([float(fm.model.head.bias.detach()[0]) for fm in run.folds])
    assert float(ts.scores["contribution"].sum()) + bias == pytest.approx(
        ts.prediction["risk"], abs=1e-3
    )
    one = tile_scores(run, d / "s.zarr", sid, fold=1)
    assert one.folds == [1]
    with pytest.raises(ConfigError, match="no fold 7"):
        tile_scores(run, d / "s.zarr", sid, fold=7)
    # bags have no slide file: viewer files that need no pixels still come out
    files = export(ts, d / "out", "tiff,geojson")
    assert files["tiff"].is_file() and files["geojson"].is_file()
    with pytest.raises(DataError, match="source slide of"):
        export(ts, d / "out", "gallery")


def test_predict_refuses_fusion_runs_and_a_broken_fusion_fold_is_a_clear_error(cox_run, tmp_path):
    import shutil

    from wsimm.train import load_run

    d, _ = cox_run
    shutil.copytree(d / "run", tmp_path / "run")
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / "config.yaml").write_text(cfg.replace("fusion: none", "fusion: graph"))
    with pytest.raises(ConfigError, match="without --fusion"):
        load_run(tmp_path / "run")  # wsimm predict
    with pytest.raises(ConfigError, match="not a trained fusion fold"):
        tile_scores(tmp_path / "run", d / "s.zarr", "x")


# ------------------------------------------------------------------------------------------
def test_score_field_averages_overlaps_and_clips_to_tissue():
    coords = np.array([[0, 0], [4, 0]])
    f = ScoreField(coords, 8, np.array([1.0, 3.0]))
    r = f.region(0, 0, 16, 2, 1.0)
    assert np.allclose(r[0, :4], 1.0) and np.allclose(r[0, 4:8], 2.0)
    assert np.allclose(r[0, 8:12], 3.0) and np.isnan(r[0, 12:]).all()
    # at a coarse scale each tile lands on the pixel under its centre
    r = f.region(0, 0, 2, 1, 16.0)
    assert r[0, 0] == pytest.approx(2.0) and np.isnan(r[0, 1])
    tissue = np.zeros((1, 2), bool)
    tissue[0, 0] = True  # mask pixels are 8 level-0 px: only x < 8 is tissue
    f = ScoreField(coords, 8, np.array([1.0, 3.0]), tissue=tissue, tissue_downsample=8)
    r = f.region(0, 0, 16, 1, 1.0)
    assert np.isfinite(r[0, :8]).all() and np.isnan(r[0, 8:]).all()


def test_smoothing_keeps_constant_fields_and_blurs_spikes():
    g = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2) * 32
    assert np.allclose(smooth_scores(g, 32, np.full(100, 0.7), 1.5), 0.7)
    v = np.zeros(100)
    v[55] = 1
    s = smooth_scores(g, 32, v, 1.0)
    assert s[55] < 1 and s[54] > 0 and s.sum() == pytest.approx(1.0, rel=0.05)


def test_formats_are_checked():
    assert parse_formats(None) == ("png", "tiff", "geojson", "gallery")
    assert parse_formats("tiff, png") == ("tiff", "png")
    with pytest.raises(ConfigError):
        parse_formats("png,svg")


def test_multi_branch_models_give_one_attention_per_class(tmp_path):
    c = make_mil_cohort(16, task="grade", seed=4, feature_dim=8, tiles_per_slide=(20, 30))
    bags_to_store(c.bags, tmp_path / "s.zarr")
    c.labels.to_csv(tmp_path / "labels.csv", index=False)
    train(store=str(tmp_path / "s.zarr"), labels=str(tmp_path / "labels.csv"), task="grade",
          out=str(tmp_path / "run"), model="clam_mb", folds=2, epochs=2, quiet=True)  # fmt: skip
    sid = sorted(c.bags)[0]
    ts = tile_scores(tmp_path / "run", tmp_path / "s.zarr", sid)
    assert set(ts.scores) == {"attention_0", "attention_1"}
    assert ts.primary == f"attention_{ts.prediction['pred_name']}"
    for v in ts.scores.values():
        assert v.shape == (len(ts),) and v.sum() == pytest.approx(1.0, abs=1e-4)
    doc = json.loads(export(ts, tmp_path / "out", "geojson")["geojson"].read_text())
    assert set(doc["features"][0]["properties"]["measurements"]) == {
        "attention_0", "attention_0 percentile", "attention_1", "attention_1 percentile"
    }  # fmt: skip


def test_slide_background_is_read_in_strips_exactly(tumour_run):
    from wsimm.heatmap._export import _read_box
    from wsimm.slide import open_slide

    _, truth = tumour_run
    with open_slide(truth["S00"].path) as s:
        box = (64.0, 32.0, 1984.0, 1440.0)
        one = _read_box(s, box, 3.0)
        strips = _read_box(s, box, 3.0, strip_pixels=5000)
        assert one.shape == (469, 640, 3)
        assert np.array_equal(one, strips)
        assert _read_box(s, (0.0, 0.0, 100.0, 50.0), 0.125).shape == (400, 800, 3)
