"""``wsimm heatmap`` on a gigapixel synthetic slide: wall time and peak RSS, streamed vs in memory.

Setup: a synthetic slide (default 80,000 x 60,000 px at 0.25 µm/px) and one of a quarter of
its area, both tiled with the ``test_tiny`` encoder (256 px tiles at 0.5 µm/px); a small ABMIL
run on ``test_tiny``-shaped synthetic bags (the scores' values do not change the cost).

Stages, each in a fresh subprocess so its peak RSS is its own:

1. ``heatmap``: ``make_heatmaps`` with every format (PNG overlay, pyramidal TIFF, QuPath
   GeoJSON, gallery) on the big slide, the TIFF at ``--tiff-downsample`` (default 4: a
   20,000 x 15,000 px overlay for the big slide), rendered tile by tile;
2. ``heatmap`` on the quarter-area slide, for the memory-flatness ratio;
3. ``canvas``: the baseline every other tool uses (CLAM, TIAToolbox): the same overlay at the
   same resolution rendered as one in-memory canvas (score sum + count + RGBA image), then
   written as a pyramid by tifffile from memory.

Printed: seconds and peak RSS per stage, RSS big / quarter (target: flat), and streamed /
canvas peak RSS.

    python benchmarks/bench_heatmap.py                               # 80k x 60k (minutes)
    python benchmarks/bench_heatmap.py --width 20000 --height 15000  # quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _stages import run_stage

CHILD = r"""
import json, os, resource, sys, time, warnings
warnings.simplefilter("ignore")
stage, args = sys.argv[1], json.loads(sys.argv[2])
out = {}
t = time.perf_counter()
if stage == "write":
    from wsimm.testing import write_synthetic_slide
    s = write_synthetic_slide(args["path"], width=args["w"], height=args["h"], seed=5,
                              mpp=0.25, tumour_fraction=0.3)
    out["tissue"] = float(s.tissue.mean())
elif stage == "tile":
    from wsimm.pipeline import tile_slides
    r = tile_slides([args["path"]], args["store"], encoder="test_tiny", quiet=True)
    assert not r.failed, r.failed
    out["tiles"] = r.tiles
elif stage == "run":
    from wsimm.testing import bags_to_store, make_mil_cohort
    from wsimm.train import train
    c = make_mil_cohort(30, task="grade", seed=0, feature_dim=16, tiles_per_slide=(50, 100))
    bags_to_store(c.bags, args["store"], encoder="test_tiny")
    c.labels.to_csv(args["labels"], index=False)
    train(store=args["store"], labels=args["labels"], task="grade", out=args["run"],
          model="abmil", folds=2, epochs=2, quiet=True, overwrite=True)
elif stage == "heatmap":
    from wsimm.heatmap import make_heatmaps
    rep = make_heatmaps(args["run"], args["store"], args["out"], fold="all", quiet=True,
                        tiff_downsample=args["ds"])
    assert not rep.failed, rep.failed
    out["tiles"] = rep.results[0]["tiles"]
    out["files_mb"] = {k: round(os.path.getsize(p) / 2**20, 1)
                       for k, p in rep.results[0]["files"].items()}
elif stage == "canvas":
    import math
    import numpy as np, tifffile
    from wsimm.heatmap import tile_scores
    from wsimm.heatmap._render import colorize
    from scipy.stats import rankdata
    from wsimm.store import open_store
    fs = open_store(args["store"])
    sid = fs.slides()[0]
    ts = tile_scores(args["run"], fs, sid, fold="all")
    v = rankdata(ts.scores["attention"]) / len(ts)
    ds = args["ds"]
    w, h = math.ceil(ts.dims[0] / ds), math.ceil(ts.dims[1] / ds)
    num = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float32)
    s = ts.tile_size0 / ds
    for (x, y), val in zip(ts.coords / ds, v):
        num[int(y):int(y + s), int(x):int(x + s)] += val
        cnt[int(y):int(y + s), int(x):int(x + s)] += 1
    with np.errstate(invalid="ignore"):
        img = colorize(num / cnt)
    del num, cnt
    with tifffile.TiffWriter(args["out"], bigtiff=True) as tw:
        level = img
        for i in range(8):
            tw.write(level, tile=(256, 256), compression="zlib", photometric="rgb",
                     extrasamples=("unassalpha",), subfiletype=0 if i == 0 else 1)
            if max(level.shape[:2]) <= 256:
                break
            level = level[::4, ::4]
    out["tiles"] = len(ts)
out["seconds"] = time.perf_counter() - t
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(stage: str, **args) -> dict:
    return run_stage(CHILD, stage, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=80_000)
    ap.add_argument("--height", type=int, default=60_000)
    ap.add_argument("--tiff-downsample", type=float, default=4.0)
    ap.add_argument("--dir", default=None, help="work folder (slides are kept for reruns)")
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="wsimm-bench-heatmap-")
    os.makedirs(work, exist_ok=True)

    def prepared(w: int, h: int) -> str:
        path = os.path.join(work, f"synthetic_{w}x{h}.svs")
        store = os.path.join(work, f"synthetic_{w}x{h}.zarr")
        if not os.path.exists(path):
            t = time.perf_counter()
            r = child("write", path=path + ".part", w=w, h=h)
            os.replace(path + ".part", path)
            print(f"wrote {path} (tissue {r['tissue']:.0%}) in {time.perf_counter() - t:.0f} s",
                  flush=True)  # fmt: skip
        if not os.path.exists(store):
            r = child("tile", path=path, store=store + ".part")
            os.replace(store + ".part", store)
            print(f"tiled {r['tiles']} tiles in {r['seconds']:.0f} s", flush=True)
        return store

    big = prepared(a.width, a.height)
    small = prepared(a.width // 2, a.height // 2)
    run = os.path.join(work, "run")
    if not os.path.exists(os.path.join(run, "metrics.json")):
        child("run", store=os.path.join(work, "bags.zarr"), labels=os.path.join(work, "l.csv"),
              run=run)  # fmt: skip
    ds = a.tiff_downsample
    rows = {
        "heatmap": child("heatmap", run=run, store=big, out=os.path.join(work, "hm_big"), ds=ds),
        "heatmap_quarter": child(
            "heatmap", run=run, store=small, out=os.path.join(work, "hm_small"), ds=ds
        ),
        "canvas": child("canvas", run=run, store=big, out=os.path.join(work, "canvas.tiff"), ds=ds),
    }
    print(f"\nslide {a.width} x {a.height} px at 0.25 µm/px; {rows['heatmap']['tiles']} tiles; "
          f"TIFF overlay at 1/{ds:g}: {a.width / ds:.0f} x {a.height / ds:.0f} px\n")  # fmt: skip
    print(f"{'stage':<18}{'seconds':>9}{'peak RSS MiB':>14}")
    for k, r in rows.items():
        print(f"{k:<18}{r['seconds']:>9.1f}{r['rss_mb']:>14.0f}")
    print(f"\nfiles (MiB): {rows['heatmap']['files_mb']}")
    big_rss, small_rss = rows["heatmap"]["rss_mb"], rows["heatmap_quarter"]["rss_mb"]
    print(f"peak RSS big / quarter-area   : {big_rss / small_rss:.2f}   "
          f"(big {big_rss:.0f} MiB; target < 2048 and flat)")  # fmt: skip
    print(f"peak RSS streamed / canvas    : {big_rss / rows['canvas']['rss_mb']:.2f}   "
          f"(canvas {rows['canvas']['rss_mb']:.0f} MiB for the TIFF alone)")  # fmt: skip


if __name__ == "__main__":
    main()
