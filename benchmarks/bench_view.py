"""``wsimm view`` tile latency: a deep-zoom tile served over HTTP vs a plain ``read_region``.

Setup: a real slide (default ``../shared/data/slides/CMU-1-Small-Region.svs``) tiled into a
feature store without an encoder, and ``wsimm view`` on that store (no run: the slide layer is
the same with one) on a local port. One client thread asks for every full-resolution tile of the
slide once (cold: cut from the slide and JPEG-encoded by the server) and again (warm: from the
server's tile cache); the baseline is ``read_region`` of the same tile on the same reader
backend, the tile's first read on a freshly opened slide, in the same process, same threads.
A second pass does the same at the level four times coarser, where the baseline reads the
slide's best level for it (the server also area-filters it down to the tile and encodes it).

Printed: median milliseconds per tile for each, and the ratios served / read_region.

    python benchmarks/bench_view.py
    python benchmarks/bench_view.py --slide PATH --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
DEFAULT = SHARED / "CMU-1-Small-Region.svs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3, help="passes; the median pass is printed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from wsimm.pipeline import tile_slides
    from wsimm.slide import open_slide
    from wsimm.store import open_store
    from wsimm.view import DeepZoom, serve
    from wsimm.view._tiles import encode_image, read_dz_tile

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    rep = tile_slides([args.slide], tmp / "s.zarr", encoder=None, quiet=True)
    assert not rep.failed, rep.failed
    fs = open_store(tmp / "s.zarr")
    (sid,) = fs.slides()
    sl = open_slide(args.slide)
    print(f"slide {args.slide} ({sid}): {sl.dimensions[0]} x {sl.dimensions[1]} px, levels "
          f"{[round(d, 2) for d in sl.level_downsamples]}, reader {type(sl).__name__}, "
          f"threads {args.threads}")  # fmt: skip
    sl.close()

    def get(url: str) -> float:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
        return time.perf_counter() - t

    rows = {}
    for coarser in (0, 2):
        cold_p, warm_p, base_p, cut_p = [], [], [], []
        for _ in range(args.repeat):
            srv = serve(None, tmp / "s.zarr", port=0).start()
            try:
                dz = srv.app.geometry(sid)
                level = dz.max_level - coarser
                cols, rows_ = dz.grid(level)
                tiles = [(c, r) for r in range(rows_) for c in range(cols)]
                get(srv.url + f"tiles/{sid}/0/0_0.jpeg")  # opens the slide: not a tile's cost
                cold = [get(srv.url + f"tiles/{sid}/{level}/{c}_{r}.jpeg") for c, r in tiles]
                warm = [get(srv.url + f"tiles/{sid}/{level}/{c}_{r}.jpeg") for c, r in tiles]
            finally:
                srv.close()
            sl = open_slide(args.slide)
            base, cut = [], []
            for c, r in tiles:
                x0, y0, w, h, ds = dz.tile_box(level, c, r)
                lv = sl.get_best_level_for_downsample(ds)
                f = ds / sl.level_downsamples[lv]
                t = time.perf_counter()
                sl.read_region((x0, y0), lv, (max(1, round(w * f)), max(1, round(h * f))))
                base.append(time.perf_counter() - t)
            sl.close()
            sl = open_slide(args.slide)
            for c, r in tiles:  # the server's own work without HTTP: read, resize, encode
                t = time.perf_counter()
                encode_image(read_dz_tile(sl, dz, level, c, r), "jpeg")
                cut.append(time.perf_counter() - t)
            sl.close()
            for acc, v in ((cold_p, cold), (warm_p, warm), (base_p, base), (cut_p, cut)):
                acc.append(statistics.median(v) * 1e3)
        mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        rows[coarser] = (len(tiles), mid(cold_p), mid(warm_p), mid(base_p), mid(cut_p))

    for coarser, (n, cold, warm, base, cut) in rows.items():
        what = "full resolution" if coarser == 0 else f"downsample {2**coarser}"
        print(f"\n{what}: {n} tiles of up to {DeepZoom(1, 1).tile} px, median ms per tile "
              f"(median of {args.repeat} passes)")  # fmt: skip
        print(f"  read_region (baseline)         : {base:7.2f} ms")
        print(f"  cut + JPEG, no HTTP            : {cut:7.2f} ms")
        print(f"  served cold (HTTP, cache miss) : {cold:7.2f} ms")
        print(f"  served warm (HTTP, cache hit)  : {warm:7.2f} ms")
        print(f"  ratio cold / read_region       : {cold / base:.2f}")
        print(f"  ratio warm / read_region       : {warm / base:.2f}")


if __name__ == "__main__":
    main()
