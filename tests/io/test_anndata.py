"""AnnData views drop into real scanpy: tiles, slides, patients, joined with omics."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scanpy")
pytest.importorskip("torch")

import scanpy as sc

from wsimm.errors import DataError, WsimmWarning
from wsimm.io import join_omics, patients_to_anndata, slides_to_anndata, to_anndata
from wsimm.store import open_store
from wsimm.testing import make_cohort
from wsimm.tiling import TileSpec
from wsimm.train import train


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    from wsimm.pipeline import tile_slides

    d = tmp_path_factory.mktemp("io")
    c = make_cohort(10, seed=2, slides="files", slide_dir=d / "slides", slide_size=(2048, 1536),
                    p_no_slide=0.0, p_multi_slide=0.3, p_no_omics=0.2)  # fmt: skip
    paths = c.save(d / "tables")
    rep = tile_slides([d / "slides"], d / "s.zarr", spec=TileSpec(mpp=0.5, tile_px=64),
                      quiet=True, encoder="test_tiny")  # fmt: skip
    assert not rep.failed
    run = train(store=str(d / "s.zarr"), labels=str(paths["labels"]), task="grade", folds=2,
                epochs=2, out=str(d / "run"), quiet=True)  # fmt: skip
    assert not run.failed
    return d, c, paths


# scanpy 1.11 points to squidpy for spatial plots; sc.pl.spatial still draws them
@pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter`:FutureWarning")
@pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning")  # scanpy
def test_tile_view_runs_through_scanpy_and_keeps_the_store_coordinates(tiled):
    import matplotlib

    matplotlib.use("Agg")
    d, _, _ = tiled
    fs = open_store(d / "s.zarr")
    sid = fs.slides()[0]
    adata = to_anndata(fs, sid, run=d / "run")
    n = len(fs.coords(sid))
    assert adata.shape == (n, 16)
    # spots on tile centres (scverse / Visium), corners in obs
    half = fs.slide_attrs(sid)["tile_size0"] / 2
    assert np.allclose(adata.obsm["spatial"], fs.coords(sid) + half)
    assert np.array_equal(adata.obs[["x", "y"]].to_numpy(), fs.coords(sid))
    assert np.allclose(adata.X, fs.features(sid, "test_tiny").astype(np.float32))
    assert {"tissue_fraction", "attention", "attention_percentile"} <= set(adata.obs.columns)
    assert adata.obs["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    lib = adata.uns["spatial"][sid]
    img = lib["images"]["hires"]
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    assert img.shape[1] == round(fs.slide_attrs(sid)["level0_dims"][0] * scale)

    sc.pp.pca(adata, n_comps=8)
    sc.pp.neighbors(adata, n_neighbors=10)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, resolution=0.5)
    sc.tl.umap(adata)
    assert adata.obsm["X_umap"].shape == (n, 2) and adata.obs["leiden"].nunique() >= 2
    # the plotted spots are the store's tile centres scaled onto the image
    ax = sc.pl.spatial(adata, color="leiden", library_id=sid, show=False, spot_size=64)[0]
    spots = [col for col in ax.collections if len(col.get_paths()) == n]
    assert len(spots) == 1
    circles = spots[0].get_paths()
    centres = np.array([(c.vertices.min(0) + c.vertices.max(0)) / 2 for c in circles])
    want = (fs.coords(sid) + half) * scale
    assert np.allclose(np.sort(centres, 0), np.sort(want, 0), atol=0.5)


def test_tile_view_without_the_slide_file_warns_and_leaves_the_image_out(tiled, tmp_path):
    import shutil

    d, _, _ = tiled
    shutil.copytree(d / "s.zarr", tmp_path / "copy.zarr")
    fs = open_store(tmp_path / "copy.zarr", "a")
    sid = fs.slides()[0]
    a = fs.slide_attrs(sid)
    fs._slide(sid).attrs["source"] = str(tmp_path / "elsewhere" / Path(a["source"]).name)
    with pytest.warns(WsimmWarning, match="slides_dir"):
        adata = to_anndata(fs, sid)
    assert "images" not in adata.uns["spatial"][sid]
    with pytest.raises(DataError, match="--slides-dir"):
        to_anndata(fs, sid, image=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a2 = to_anndata(fs, sid, image=True, slides_dir=d / "slides")
    assert "images" in a2.uns["spatial"][sid]


def test_slide_and_patient_views_join_with_omics_and_feed_fusion(tiled, tmp_path):
    import anndata as ad

    d, c, paths = tiled
    fs = open_store(d / "s.zarr")
    slides = slides_to_anndata(fs)
    assert slides.n_obs == len(fs.slides()) and slides.n_vars == 16
    sid = fs.slides()[0]
    assert np.allclose(slides[sid].X, fs.features(sid, "test_tiny").astype(np.float32).mean(0),
                       atol=1e-5)  # fmt: skip
    mil = slides_to_anndata(fs, run=d / "run", fold=1)
    assert mil.n_obs == slides.n_obs and "fold 1" in mil.uns["wsimm"]["embedding"]

    pat = patients_to_anndata(fs, paths["labels"], clinical=paths["clinical"])
    assert set(pat.obs_names) == set(c.labels["patient_id"])  # every patient has slides here
    assert {"grade", "time", "event", "age", "stage", "n_slides"} <= set(pat.obs.columns)
    multi = c.labels.groupby("patient_id")["slide_id"].nunique()
    assert (pat.obs["n_slides"] == multi.reindex(pat.obs_names)).all()
    omics = ad.read_h5ad(paths["omics_h5ad"])
    p = multi[multi.index.isin(omics.obs_names)].idxmax()  # several slides, and omics
    want = np.mean([fs.features(s, "test_tiny").astype(np.float32).mean(0)
                    for s in c.labels.loc[c.labels.patient_id == p, "slide_id"]], 0)  # fmt: skip
    assert multi[p] > 1 and np.allclose(pat[p].X, want, atol=1e-5)

    joined = join_omics(pat, omics)
    assert set(joined.obs_names) == set(omics.obs_names) & set(pat.obs_names)
    assert joined.obsm["X_wsimm"].shape == (joined.n_obs, 16)
    assert np.allclose(joined[p].obsm["X_wsimm"], want, atol=1e-5)
    sc.pp.pca(joined, n_comps=5)
    # and back: the joined AnnData is an --omics input for a fusion run
    joined.write_h5ad(tmp_path / "joined.h5ad")
    res = train(labels=str(paths["labels"]), task="grade", omics=str(tmp_path / "joined.h5ad"),
                fusion="concat", folds=2, epochs=2, out=str(tmp_path / "run"), quiet=True,
                baselines="none")  # fmt: skip
    assert not res.failed and len(res.predictions) == 10


def test_views_and_heatmaps_of_an_imported_h5_store(tiled, tmp_path):
    """Issue 23 points 1-2: a store made by ``import-h5`` (here wsimm's own export) gives a
    tile view without failing on the h5 "slide" (a warning, no image) and tile scores with
    the tiles' real footprint."""
    from wsimm.heatmap import tile_scores
    from wsimm.store import export_h5, import_h5

    d, _, _ = tiled
    src = open_store(d / "s.zarr")
    export_h5(d / "s.zarr", tmp_path / "h5")
    enc = src.encoders(src.slides()[0])[0]
    import_h5(tmp_path / "h5", tmp_path / "imp.zarr", encoder=enc)
    fs = open_store(tmp_path / "imp.zarr")
    sid = fs.slides()[0]
    with pytest.warns(WsimmWarning, match="no slide image"):
        adata = to_anndata(fs, sid)
    sc.pp.neighbors(adata, n_neighbors=5, use_rep="X")
    assert "images" not in adata.uns["spatial"][sid]
    ts = tile_scores(d / "run", fs, sid)
    want = src.slide_attrs(sid)
    assert ts.tile_size0 == pytest.approx(want["tile_size0"], abs=1)
    assert ts.stride0 == pytest.approx(want["stride0"], abs=1)
    assert len(ts.coords) == len(src.coords(sid)) and np.isfinite(ts.scores["attention"]).all()
    # the overlay is opaque over every tile's centre (the import knows no tissue mask)
    import tiffslide

    from wsimm.heatmap import export

    files = export(ts, tmp_path / "hm", "tiff", tiff_downsample=4)
    with tiffslide.TiffSlide(str(files["tiff"])) as o:
        img = np.asarray(o.read_region((0, 0), 0, o.level_dimensions[0]))
    ctr = ((ts.coords + ts.tile_size0 / 2) / 4).astype(int)
    assert (img[ctr[:, 1], ctr[:, 0], 3] == 255).all()
