"""``wsimm tile`` on a gigapixel synthetic slide: speed against baselines measured in the same run.

Stages, each in a fresh subprocess so its peak RSS is its own:

1. ``thumbnail``: reading the thumbnail that tissue detection works on (8 µm/px, at most
   4096 px on the long side) and nothing else;
2. ``coords``: ``tile_slides(encoder=None)``: thumbnail + tissue + grid + store (+ Dask start);
3. ``ceiling``: every TIFF tile that the grid's tiles cover, decoded by tifffile + imagecodecs
   on the same number of threads, no assembling, no resampling, no store. Reported as grid
   tiles per second, the rate no reader of this file can beat;
4. ``pipeline``: ``tile_slides`` with the ``mean_rgb`` encoder (the cost of an identity
   encoder: one mean per tile) into a fresh store: read + resample + encode + write;
5. ``naive``: ``openslide.OpenSlide.read_region`` + PIL resize over a sample of the same tiles
   (what a hand-written extraction script does), on the same number of threads as the
   pipeline's workers (one OpenSlide handle per thread);
6. ``pipeline`` again on a slide of a quarter of the area, for the memory-flatness ratio.

Every stage runs ``--repeat`` times (default 2), interleaved; the fastest run of each counts,
the naive baseline's included (peak RSS: the largest). Each stage's imports are timed apart
from its work (a run pays importing dask.distributed and zarr once, however many slides it
tiles). Ratios
printed: (coords - thumbnail) seconds, pipeline / ceiling, pipeline / naive, and peak RSS
big / small.

    python benchmarks/bench_tile.py                       # 80,000 x 60,000 px (a few minutes)
    python benchmarks/bench_tile.py --width 20000 --height 15000   # quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _stages import run_stage

CHILD = r"""
import json, os, resource, sys, time
stage, args = sys.argv[1], json.loads(sys.argv[2])
out = {}
t = time.perf_counter()
if stage == "write":
    from wsimm.testing import write_synthetic_slide
    s = write_synthetic_slide(args["path"], width=args["w"], height=args["h"], seed=3,
                              mpp=args["mpp"],
                              pen_marks=("blue", "green"), debris=True, folds=True)
    out["tissue"] = float(s.tissue.mean())
elif stage == "thumbnail":
    from wsimm.slide import open_slide
    from wsimm.tissue import thumbnail_downsample
    out["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    s = open_slide(args["path"])
    img = s.read_downsampled(thumbnail_downsample(s))  # the thumbnail tissue detection reads
    out["shape"] = list(img.shape)
elif stage == "coords":
    from wsimm.pipeline import tile_slides
    import distributed, zarr  # what tile_slides imports on its first call
    out["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    r = tile_slides([args["path"]], args["store"], encoder=None, workers=args["workers"],
                    quiet=True)
    out["tiles"] = r.tiles
elif stage == "pipeline":
    from wsimm.pipeline import tile_slides
    import distributed, zarr
    out["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    r = tile_slides([args["path"]], args["store"], encoder="mean_rgb", workers=args["workers"],
                    batch_size=64, quiet=True)
    assert not r.failed, r.failed
    out["tiles"] = r.tiles
elif stage == "ceiling":
    import math
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np, tifffile
    from wsimm.store import open_store
    fs = open_store(args["store"])
    sid = fs.slides()[0]
    coords, a = fs.coords(sid), fs.slide_attrs(sid)
    level, ds = a["read_level"], a["read_downsample"]
    tf = tifffile.TiffFile(args["path"])
    page = tf.series[0].levels[level].keyframe
    th, tw = page.tilelength, page.tilewidth
    across = math.ceil(page.imagewidth / tw)
    n = math.ceil(a["tile_size0"] / ds) + 1
    need = set()
    for x, y in coords:
        lx, ly = int(x // ds), int(y // ds)
        for ty in range(ly // th, min(page.imagelength - 1, ly + n - 1) // th + 1):
            for tx in range(lx // tw, min(page.imagewidth - 1, lx + n - 1) // tw + 1):
                need.add(ty * across + tx)
    need = sorted(need)
    offs, cnts = page.dataoffsets, page.databytecounts
    fd = os.open(args["path"], os.O_RDONLY)
    decode, tables = page.decode, page.jpegtables
    t = time.perf_counter()
    def work(part):
        for i in part:
            decode(os.pread(fd, cnts[i], offs[i]), i, jpegtables=tables)
    k = args["workers"]
    parts = [need[j::k] for j in range(k)]
    with ThreadPoolExecutor(k) as ex:
        list(ex.map(work, parts))
    out["tiff_tiles"] = len(need)
    out["tiles"] = len(coords)
elif stage == "naive":
    import numpy as np, openslide
    from PIL import Image
    from wsimm.store import open_store
    fs = open_store(args["store"])
    sid = fs.slides()[0]
    coords, a = fs.coords(sid), fs.slide_attrs(sid)
    level, ds, size0 = a["read_level"], a["read_downsample"], a["tile_size0"]
    n = int(np.ceil(size0 / ds))
    px = a["tile_px"]
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(coords), min(len(coords), args["n"]), replace=False))
    k = args["workers"]
    handles = [openslide.OpenSlide(args["path"]) for _ in range(k)]
    def work(j):
        osr = handles[j]
        for x, y in coords[pick[j::k]]:
            im = osr.read_region((int(x), int(y)), level, (n, n)).convert("RGB")
            np.asarray(im.resize((px, px), Image.Resampling.BOX))
    t = time.perf_counter()
    with ThreadPoolExecutor(k) as ex:
        list(ex.map(work, range(k)))
    out["tiles"] = len(pick)
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
    ap.add_argument(
        "--slide-mpp",
        type=float,
        default=0.25,
        help="µm/px of the synthetic slide (0.25: a 40x scan, read at 2:1 for the "
        "0.5 µm/px tiles; 0.5: a 20x scan, no resampling)",
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive-tiles", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=2, help="runs per stage; the fastest counts")
    ap.add_argument("--dir", default=None, help="work folder (slides are kept for reruns)")
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="wsimm-bench-tile-")
    os.makedirs(work, exist_ok=True)

    def slide(w: int, h: int) -> str:
        tag = "" if a.slide_mpp == 0.25 else f"_{a.slide_mpp}mpp"
        path = os.path.join(work, f"synthetic_{w}x{h}{tag}.svs")
        if not os.path.exists(path):
            t = time.perf_counter()
            r = child("write", path=path + ".part", w=w, h=h, mpp=a.slide_mpp)
            os.replace(path + ".part", path)
            print(f"wrote {path} ({w} x {h}, tissue {r['tissue']:.0%}) "
                  f"in {time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
        return path

    big = slide(a.width, a.height)
    small = slide(a.width // 2, a.height // 2)

    def store(name: str) -> str:
        import shutil

        p = os.path.join(work, name + ".zarr")
        shutil.rmtree(p, ignore_errors=True)
        return p

    # --repeat rounds over the timed stages, interleaved (a noisy spell on a shared machine
    # then hits every stage, not one ratio's numerator); the fastest run of each counts
    coords_store = os.path.join(work, "coords.zarr")
    runs: dict[str, list[dict]] = {}
    for _ in range(a.repeat):
        for name, stage, kw in [
            ("thumbnail", "thumbnail", dict(path=big)),
            ("coords", "coords", dict(path=big, store=store("coords"))),
            ("ceiling", "ceiling", dict(path=big, store=coords_store)),
            ("pipeline", "pipeline", dict(path=big, store=store("pipe"))),
            ("pipeline_small", "pipeline", dict(path=small, store=store("pipe_small"))),
            ("naive", "naive", dict(path=big, store=coords_store, n=a.naive_tiles)),
        ]:
            runs.setdefault(name, []).append(child(stage, workers=a.workers, **kw))
    rows = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    for k in ("pipeline", "pipeline_small"):  # peak RSS: the largest of the runs
        rows[k]["rss_mb"] = max(r["rss_mb"] for r in runs[k])

    print(f"\nslide {a.width} x {a.height} px at {a.slide_mpp} µm/px, {a.workers} workers, "
          f"{rows['pipeline']['tiles']} tissue tiles at 0.5 µm/px, 256 px\n")  # fmt: skip
    print(f"{'stage':<16}{'seconds':>9}{'tiles/s':>10}{'peak RSS MiB':>14}")
    for k, r in rows.items():
        rate = r["tiles"] / r["seconds"] if r.get("tiles") else float("nan")
        print(f"{k:<16}{r['seconds']:>9.2f}{rate:>10.0f}{r['rss_mb']:>14.0f}")
    rate = {k: r["tiles"] / r["seconds"] for k, r in rows.items() if r.get("tiles")}
    extra = rows["coords"]["seconds"] - rows["thumbnail"]["seconds"]
    fixed = rows["coords"]["imports"] - rows["thumbnail"]["imports"]
    print()
    print(f"coords-only minus thumbnail read : {extra:+.2f} s   (target < 1 s: tissue, grid, "
          "store, scheduling)")  # fmt: skip
    print(f"  + imports, once per run        : {fixed:+.2f} s   (dask.distributed, zarr; "
          f"{extra + fixed:+.2f} s in all)")  # fmt: skip
    phase = rows["pipeline"]["seconds"] - rows["coords"]["seconds"]
    phase_rate = rows["pipeline"]["tiles"] / phase
    print(f"pipeline / decode ceiling        : {rate['pipeline'] / rate['ceiling']:.2f} end to end,"
          f" {phase_rate / rate['ceiling']:.2f} in the tile phase (pipeline - coords-only,"
          f" {phase_rate:.0f} tiles/s)")  # fmt: skip
    print(f"                                   (target >= 0.7; the ceiling decodes "
          f"{rows['ceiling']['tiff_tiles']} TIFF tiles and plans nothing)")  # fmt: skip
    print(
        f"pipeline / naive openslide loop  : {rate['pipeline'] / rate['naive']:.2f}x"
        f"   (both on {a.workers} threads, fastest of {a.repeat}; target >= 2x)"
    )
    print(f"peak RSS big / quarter-area      : "
          f"{rows['pipeline']['rss_mb'] / rows['pipeline_small']['rss_mb']:.2f}"
          f"   (big {rows['pipeline']['rss_mb']:.0f} MiB; target < 2048 and flat)")  # fmt: skip


if __name__ == "__main__":
    main()
