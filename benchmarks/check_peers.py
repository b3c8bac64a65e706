"""wsimm's files through the peers' own code, and the peers' files through wsimm (issue 23).

The peers' code is never part of wsimm: check them out in a scratch folder outside the
repository and make them importable in an environment that also has wsimm (TRIDENT
``pip install --no-deps -e``; STAMP's ``src`` on the path, it declares Python >= 3.13 but its
readers and ``extract_`` run on 3.11; CLAM is a folder of scripts, passed with ``--clam``, whose
``presets/`` gains ``wsimm_small.csv``: tcga.csv with a_t = a_h = 1, for small slides). Every
check prints one line: PASS/FAIL, what, the measured figure.

    python benchmarks/check_peers.py --clam ../peers/CLAM --slides ../shared/data/slides \
        --work /tmp/peers-run

Encoder: each tile's mean R, G, B, which every tool can run offline; two tools reading the same
footprint get the same three numbers (up to resampling), so it checks the footprints.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

SLIDES = Path("../shared/data/slides")
CLAM = Path("CLAM")
WORK = Path("peers-run")
RESULTS: list[tuple[bool, str, str]] = []
# (slide, µm/px, tile px): the NDPI is read from level 2 (downsample 4), the SVS at level 0
CASES = [
    ("hamamatsu-test3-DAPI-2-387.ndpi", 0.92, 128),
    ("CMU-1-Small-Region.svs", 0.5, 256),
]


def check(ok: bool, what: str, figure: str) -> None:
    RESULTS.append((bool(ok), what, figure))
    print(("PASS " if ok else "FAIL ") + what + ": " + figure, flush=True)


def wsimm(*args: str) -> None:
    quiet = ["--quiet"] if args[0] not in ("export-h5", "import-h5") else []
    r = subprocess.run(["wsimm", *args, *quiet], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"wsimm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


class MeanRGB(torch.nn.Module):
    """A patch encoder every tool can run: each tile's mean R, G, B in [0, 1]. Two tools that
    read the same footprint get the same three numbers (up to their resampling)."""

    enc_name = "mean_rgb"
    embedding_dim = 3
    precision = torch.float32

    def __init__(self):
        super().__init__()
        import torchvision.transforms as T

        self.eval_transforms = T.ToTensor()

    def forward(self, x):
        return x.float().mean(dim=(2, 3))


def store_tiles(store: Path, sid: str, enc: str = "mean_rgb"):
    from wsimm.store import open_store

    fs = open_store(store)
    return fs.coords(sid), fs.slide_attrs(sid), fs.features(sid, enc).astype(np.float32)


# ---------------------------------------------------------------- wsimm -> peers
def wsimm_to_peers(name: str, mpp: float, px: int) -> None:
    sid = Path(name).stem
    base = WORK / f"w2p_{sid}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    store = base / "s.zarr"
    wsimm("tile", str(SLIDES / name), "--store", str(store), "--mpp", str(mpp),
          "--tile-px", str(px), "--encoder", "mean_rgb")  # fmt: skip
    coords, a, feats = store_tiles(store, sid)
    size0 = a["tile_size0"]
    tag = f"{name} (level {a['read_level']}, {len(coords)} tiles, footprint {size0:.2f} px)"
    for layout in ("clam", "trident", "stamp"):
        wsimm("export-h5", str(store), "--out", str(base / layout), "--layout", layout)
    clam_checks(base / "clam", sid, name, coords, feats, size0, a, tag)
    trident_checks(base / "trident", sid, name, coords, feats, size0, tag)
    stamp_checks(base / "stamp", sid, coords, feats, size0, a, tag)
    squidpy_checks(store, tag)


def clam_checks(out: Path, sid, name, coords, feats, size0, a, tag) -> None:
    import pandas as pd
    from dataset_modules.dataset_generic import Generic_MIL_Dataset
    from vis_utils.heatmap_utils import drawHeatmap
    from wsi_core.WholeSlideImage import WholeSlideImage

    csv = out / "labels.csv"
    pd.DataFrame({"case_id": ["p0"], "slide_id": [sid], "label": ["a"]}).to_csv(csv, index=False)
    ds = Generic_MIL_Dataset(csv_path=str(csv), data_dir=str(out), shuffle=False, seed=0,
                             print_info=False, label_dict={"a": 0}, patient_strat=False,
                             ignore=[])  # fmt: skip
    ds.load_from_h5(False)
    f_pt, _ = ds[0]
    ds.load_from_h5(True)
    f_h5, _, c_h5 = ds[0]
    same = np.allclose(f_pt.numpy(), feats, atol=1e-3)
    same = same and np.allclose(np.asarray(f_h5), feats, atol=1e-3)
    check(same,
          f"wsimm -> CLAM Generic_MIL_Dataset, use_h5 False (pt_files) and True (h5_files), {tag}",
          f"{tuple(f_pt.shape)} and {tuple(np.asarray(f_h5).shape)} features equal the store's; "
          f"coords equal: {bool(np.array_equal(np.asarray(c_h5), coords))}")  # fmt: skip
    with h5py.File(out / "h5_files" / f"{sid}.h5") as f:
        ca = dict(f["coords"].attrs)
    wsi = WholeSlideImage(str(SLIDES / name))
    # create_heatmaps.py: vis_patch_size = patch_size x level_downsamples[patch_level]
    ds_clam = np.array(wsi.level_downsamples[int(ca["patch_level"])])
    vis = tuple((np.array([ca["patch_size"]] * 2) * ds_clam).astype(int))
    check(abs(vis[0] - size0) <= 1 and abs(vis[1] - size0) <= 1,
          f"wsimm -> CLAM heatmap footprint (patch_size x level_downsamples[patch_level]), {tag}",
          f"CLAM {vis} vs wsimm {size0:.2f} level-0 px")  # fmt: skip
    vis_level = 0
    scores = np.arange(1, len(coords) + 1, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = drawHeatmap(scores, coords, wsi_object=wsi, vis_level=vis_level, patch_size=vis,
                          blank_canvas=True, segment=False, alpha=1.0, binarize=False,
                          convert_to_percentiles=True, cmap="jet", blur=False, overlap=0.0,
                          use_holes=False)  # fmt: skip
    arr = np.asarray(img.convert("RGB")).astype(int)
    coloured = np.abs(arr - 255).sum(-1) > 30
    expect = np.zeros(coloured.shape, bool)
    for x, y in coords:
        x0, y0 = round(float(x)), round(float(y))
        x1, y1 = round(float(x) + size0), round(float(y) + size0)
        expect[y0:y1, x0:x1] = True
    inside = coloured[expect].mean()
    outside = coloured[~expect].sum() / max(expect.sum(), 1)
    check(inside > 0.995 and outside < 0.005,
          f"wsimm -> CLAM drawHeatmap at level {a['read_level']} tiling, {tag}",
          f"{100 * inside:.2f}% of wsimm's tile footprints coloured, {100 * outside:.2f}% "
          "coloured outside them (was 16.7% uncoloured before the fix)")  # fmt: skip


def trident_checks(out: Path, sid, name, coords, feats, size0, tag) -> None:
    from trident import load_wsi
    from trident.slide_encoder_models import MeanSlideEncoder

    patches = next(out.glob("*/patches/*_patches.h5"))
    featdir = next(out.glob("*/features_*"))
    wsi = load_wsi(str(SLIDES / name), lazy_init=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fpath = wsi.extract_patch_features(patch_encoder=MeanRGB(), coords_path=str(patches),
                                           save_features=str(out / "trident_feats"), device="cpu",
                                           batch_limit=64)  # fmt: skip
    fell_back = [str(x.message) for x in w if "Cannot read using Trident" in str(x.message)]
    with h5py.File(fpath) as f:
        tf, tc = f["features"][:], f["coords"][:]
    diff = np.abs(tf - feats).max() * 255
    check(not fell_back and np.array_equal(tc, coords) and diff < 4,
          f"wsimm -> TRIDENT extract_patch_features on wsimm's coords, {tag}",
          f"read as TRIDENT coords (no legacy fallback: {not fell_back}); per-tile mean RGB "
          f"TRIDENT vs wsimm max |diff| {diff:.2f} / 255 (same footprints)")  # fmt: skip
    enc = MeanSlideEncoder(model_name="mean-default")
    spath = wsi.extract_slide_features(patch_features_path=str(next(featdir.glob("*.h5"))),
                                       slide_encoder=enc, save_features=str(out / "slide"),
                                       device="cpu")  # fmt: skip
    with h5py.File(spath) as f:
        sv = np.asarray(f["features"][:]).ravel()
    check(
        np.allclose(sv, feats.mean(0), atol=1e-3),
        f"wsimm -> TRIDENT extract_slide_features (mean-default) on wsimm's features, {tag}",
        f"slide vector {np.round(sv, 4).tolist()} = mean of the store's tile features",
    )


def stamp_checks(out: Path, sid, coords, feats, size0, a, tag) -> None:
    from stamp.modeling.data import BagDataset, get_coords

    p = out / f"{sid}.h5"
    with h5py.File(p) as f:
        ci = get_coords(f)
    mpp0 = a["mpp"]
    px = ci.coords_um / mpp0
    err = np.abs(px - coords).max()
    size_err = abs(ci.tile_size_um / mpp0 - size0)
    check(err <= 1 and size_err <= 1,
          f"wsimm -> STAMP get_coords on --layout stamp, {tag}",
          f"coords within {err:.3f} level-0 px, tile {ci.tile_size_um:.2f} µm = "
          f"{ci.tile_size_um / mpp0:.2f} px (wsimm {size0:.2f}), STAMP's mpp {ci.mpp:.4f} "
          f"(wsimm target {a['target_mpp']})")  # fmt: skip
    bd = BagDataset(bags=[[p]], bag_size=None, ground_truths=torch.zeros(1, 2),
                    transform=None)  # fmt: skip
    bag, _, n, _ = bd[0]
    check(
        n == len(feats) and np.allclose(bag.numpy(), feats, atol=1e-3),
        f"wsimm -> STAMP BagDataset (training reader), {tag}",
        f"{n} tiles, features equal the store's",
    )


def squidpy_checks(store: Path, tag: str) -> None:
    """squidpy on wsimm's tile AnnData: grid neighbours, Moran's I, and the spots of
    ``spatial_scatter`` on the tile centres of the slide image (Visium's convention)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import squidpy as sq
    except ImportError:
        print(f"skip squidpy checks ({tag}): squidpy is not installed")
        return
    import matplotlib.pyplot as plt

    from wsimm.io import to_anndata
    from wsimm.store import open_store

    fs = open_store(store)
    sid = fs.slides()[0]
    half = fs.slide_attrs(sid)["tile_size0"] / 2
    a = to_anndata(store, sid)
    sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=4)
    sq.gr.spatial_autocorr(a, mode="moran", genes=list(a.var_names[:3]))
    fig, ax = plt.subplots()
    sq.pl.spatial_scatter(a, color=a.var_names[0], library_id=sid, img_res_key="hires",
                          shape=None, size=4, ax=ax)  # fmt: skip
    drawn = np.asarray(ax.collections[0].get_offsets())  # the spots, in image pixels
    plt.close(fig)
    sf = a.uns["spatial"][sid]["scalefactors"]["tissue_hires_scalef"]
    corners = a.obs[["x", "y"]].to_numpy()
    to_centre = min_corner_error(drawn, (corners + half) * sf)
    to_corner = min_corner_error(drawn, corners * sf)
    check(to_centre < 0.5 and "moranI" in a.uns,
          f"wsimm -> squidpy {sq.__version__} spatial_scatter / neighbours / Moran's I, {tag}",
          f"spots within {to_centre:.3f} image px of the tile centres ({to_corner:.2f} from the "
          f"corners, half a tile {half * sf:.2f})")  # fmt: skip


# ---------------------------------------------------------------- peers -> wsimm
def demo_run() -> Path:
    d = WORK / "demo"
    if not (d / "run").exists():
        wsimm("demo", "--out", str(d), "--patients", "12")
    return d / "run"


def into_wsimm(
    h5dir: Path,
    sid: str,
    name: str,
    base: Path,
    size0_peer: float,
    coords_peer: np.ndarray,
    feats_peer: np.ndarray,
    who: str,
) -> None:
    """import-h5 with --slides-dir, embed (test_tiny and mean_rgb) on the imported store,
    heatmap GeoJSON from the demo run: footprints, and wsimm's own reading of the tiles."""
    store = base / "imported.zarr"
    shutil.rmtree(store, ignore_errors=True)
    wsimm("import-h5", str(h5dir), "--store", str(store), "--encoder", "peer",
          "--slides-dir", str(SLIDES))  # fmt: skip
    coords, a, _ = store_tiles(store, sid, "peer")
    tag = f"{who} -> wsimm, {name} ({len(coords)} tiles)"
    check(abs(a["tile_size0"] - size0_peer) <= 1 and np.abs(coords - coords_peer).max() <= 1,
          f"{tag}: import-h5 geometry",
          f"footprint {a['tile_size0']:.2f} vs {who} {size0_peer:.2f} level-0 px, "
          f"stride {a['stride0']:.1f}, read level {a['read_level']}, µm/px {a['mpp']:.4f}, "
          f"source attached: {a['source'].endswith(name)}")  # fmt: skip
    wsimm("embed", str(store), "--encoder", "mean_rgb")
    wsimm("embed", str(store), "--encoder", "test_tiny")
    _, _, mine = store_tiles(store, sid, "mean_rgb")
    if feats_peer is not None and feats_peer.shape[1] == 3:
        # tiles past the slide's edge: wsimm pads white (as CLAM does), openslide-based
        # readers transparent black, so only whole tiles are compared
        w0, h0 = a["level0_dims"]
        inside = (coords[:, 0] + a["tile_size0"] <= w0) & (coords[:, 1] + a["tile_size0"] <= h0)
        diff = np.abs(mine - feats_peer)[inside].max() * 255
        n_in, n_out = int(inside.sum()), int((~inside).sum())
        check(diff < 4, f"{tag}: wsimm embed reads the peer's tiles",
              f"per-tile mean RGB wsimm vs {who} max |diff| {diff:.2f} / 255 over "
              f"{n_in} whole tiles ({n_out} run past the slide edge)")  # fmt: skip
    hm = base / "heatmaps"
    shutil.rmtree(hm, ignore_errors=True)
    wsimm("heatmap", "--run", str(demo_run()), "--store", str(store), "--out", str(hm),
          "--format", "geojson,png,tiff")  # fmt: skip
    gj = json.loads((hm / f"{sid}.geojson").read_text())
    boxes = []
    for feat in gj["features"]:
        ring = np.asarray(feat["geometry"]["coordinates"][0], float)
        if len(ring) == 5:
            boxes.append((*ring.min(0), *(ring.max(0) - ring.min(0))))
    boxes = np.asarray(boxes)
    sizes = boxes[:, 2:]
    corner_err = min_corner_error(boxes[:, :2], coords_peer)
    fits = np.abs(sizes - size0_peer).max() <= 1 and corner_err <= 1
    check(len(boxes) >= len(coords_peer) and fits,
          f"{tag}: wsimm heatmap GeoJSON tiles",
          f"{len(boxes)} tile polygons, size {sizes.min():.2f}-{sizes.max():.2f} vs {who} "
          f"{size0_peer:.2f}; corners within {corner_err:.2f} px of the peer's coords")  # fmt: skip


def min_corner_error(corners: np.ndarray, coords: np.ndarray) -> float:
    d = np.abs(corners[:, None, :] - coords[None, :, :]).max(-1)
    return float(d.min(1).max())


def trident_to_wsimm(name: str) -> None:
    from trident import load_wsi
    from trident.segmentation_models import segmentation_model_factory

    sid = Path(name).stem
    base = WORK / f"t2w_{sid}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    wsi = load_wsi(str(SLIDES / name), lazy_init=False)
    wsi.segment_tissue(segmentation_model=segmentation_model_factory("otsu"), target_mag=10,
                       job_dir=str(base), device="cpu")  # fmt: skip
    cpath = wsi.extract_tissue_coords(target_mag=10, patch_size=256, save_coords=str(base))
    fpath = wsi.extract_patch_features(patch_encoder=MeanRGB(), coords_path=cpath,
                                       save_features=str(base / "features_mean_rgb"),
                                       device="cpu", batch_limit=64)  # fmt: skip
    with h5py.File(fpath) as f:
        coords, feats = f["coords"][:], f["features"][:]
        size0 = float(f["coords"].attrs["patch_size_level0"])
    into_wsimm(Path(fpath), sid, name, base, size0, coords, feats, "TRIDENT")
    squidpy_checks(base / "imported.zarr", f"TRIDENT import of {name}")


def scratch(prefix: str, name: str) -> tuple[str, Path, Path]:
    """A fresh folder for one slide's run and a ``slides/`` in it linking that slide only."""
    sid = Path(name).stem
    base = WORK / f"{prefix}_{sid}"
    shutil.rmtree(base, ignore_errors=True)
    src = base / "slides"
    src.mkdir(parents=True)
    (src / name).symlink_to(SLIDES / name)
    return sid, base, src


def clam_to_wsimm(name: str, level: int) -> None:
    """CLAM's create_patches_fp.py at patch_level (128 px every 96 px: overlapping; a preset
    with CLAM's tcga.csv values but a_t = a_h = 1, these slides are small), then CLAM's own
    Whole_Slide_Bag_FP reader with the mean-RGB encoder and CLAM's save_hdf5
    (extract_features_fp.py's loop; CLAM's ResNet weights cannot be downloaded here)."""
    import openslide
    from dataset_modules.dataset_h5 import Whole_Slide_Bag_FP
    from utils.file_utils import save_hdf5

    sid, base, src = scratch("c2w", name)
    r = subprocess.run([sys.executable, "create_patches_fp.py", "--source", str(src),
                        "--save_dir", str(base / "clam"), "--patch_size", "128",
                        "--step_size", "96", "--patch_level", str(level), "--seg", "--patch",
                        "--preset", "wsimm_small.csv"],
                       cwd=CLAM, capture_output=True, text=True)  # fmt: skip
    ph5 = base / "clam" / "patches" / f"{sid}.h5"
    if not ph5.exists():
        check(False, f"CLAM create_patches_fp on {name}", (r.stdout + r.stderr)[-400:])
        return
    import torchvision.transforms as T

    wsi = openslide.open_slide(str(SLIDES / name))
    ds = Whole_Slide_Bag_FP(file_path=str(ph5), wsi=wsi, img_transforms=T.ToTensor())
    model = MeanRGB()
    out = base / "clam" / "h5_files" / f"{sid}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = "w"
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    for batch in loader:
        feats = model(batch["img"]).numpy().astype(np.float32)
        save_hdf5(str(out), {"features": feats, "coords": batch["coord"].numpy().astype(np.int32)},
                  attr_dict=None, mode=mode)  # fmt: skip
        mode = "a"
    with h5py.File(ph5) as f:
        pa = dict(f["coords"].attrs)
    with h5py.File(out) as f:  # CLAM's h5_files carry no attributes: wsimm finds patches/
        assert not dict(f["coords"].attrs)
        coords, feats = f["coords"][:], f["features"][:]
    size0 = float(pa["patch_size"]) * float(pa["downsample"][0])
    into_wsimm(out, sid, name, base, size0, coords, feats, "CLAM")


def stamp_to_wsimm(name: str) -> None:
    import torchvision.transforms as T
    from stamp.preprocessing import extract_
    from stamp.preprocessing.extractor import Extractor

    sid, base, src = scratch("s2w", name)
    ext = Extractor(model=MeanRGB(), transform=T.ToTensor(), identifier="mean_rgb")
    extract_(wsi_dir=src, output_dir=base / "stamp", wsi_list=None, cache_dir=None,
             cache_tiles_ext="jpg", extractor=ext, tile_size_px=224, tile_size_um=256.0,
             max_workers=2, device="cpu", default_slide_mpp=None, brightness_cutoff=240,
             canny_cutoff=0.02, generate_hash=False)  # fmt: skip
    files = list((base / "stamp").glob("**/*.h5"))
    if not files:
        check(False, f"STAMP extract_ on {name}", "no feature file written")
        return
    with h5py.File(files[0]) as f:
        cum, feats = f["coords"][:], f["feats"][:].astype(np.float32)
        tum = float(f.attrs["tile_size_um"])
    import openslide

    mpp0 = float(openslide.open_slide(str(SLIDES / name)).properties["openslide.mpp-x"])
    into_wsimm(files[0], sid, name, base, tum / mpp0, cum / mpp0, feats, "STAMP")


def main() -> None:
    global SLIDES, CLAM, WORK
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clam", required=True, help="a checkout of mahmoodlab/CLAM")
    ap.add_argument("--slides", default=str(SLIDES), help="folder with the two real slides")
    ap.add_argument("--work", default=str(WORK), help="scratch folder for outputs")
    args = ap.parse_args()
    SLIDES, CLAM, WORK = Path(args.slides).resolve(), Path(args.clam).resolve(), Path(args.work)
    WORK = WORK.resolve()
    sys.path.insert(0, str(CLAM))
    preset = CLAM / "presets" / "wsimm_small.csv"
    if not preset.exists():
        import pandas as pd

        pd.read_csv(CLAM / "presets" / "tcga.csv").assign(a_t=1, a_h=1).to_csv(preset, index=False)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name, mpp, px in CASES:
        wsimm_to_peers(name, mpp, px)
    for name, _, _ in CASES:
        trident_to_wsimm(name)
    clam_to_wsimm("hamamatsu-test3-DAPI-2-387.ndpi", 1)
    clam_to_wsimm("CMU-1-Small-Region.svs", 0)
    for name, _, _ in CASES:
        stamp_to_wsimm(name)
    bad = [r for r in RESULTS if not r[0]]
    print(f"\n{len(RESULTS) - len(bad)} of {len(RESULTS)} checks passed")
    (WORK / "results.json").write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
