"""Tiling on 1 vs 2 local Dask workers, and the scheduler's share of task time.

A cohort of synthetic slides is tiled with the ``test_tiny`` encoder into fresh stores by a
local ``dask.distributed`` cluster of worker processes (one thread each) on loopback, first with
one worker and then with two. Dask's task stream records every task's start and end on its
worker; the per-task scheduling overhead is the part of the workers' busy window not spent in
tasks:

    overhead = 1 - sum(task seconds) / sum over workers(last end - first start)

Printed: tiles/s for each, the 2 / 1 scaling ratio, and the overhead (target < 5%).

    python benchmarks/bench_scaling.py                 # 12 slides of 6144 x 4608 px, 128 px tiles
    python benchmarks/bench_scaling.py --slides 4      # quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings


def run(slides_dir: str, store: str, n_workers: int, tile_px: int) -> dict:
    from distributed import Client, LocalCluster, get_task_stream

    from wsimm.pipeline import tile_slides
    from wsimm.tiling import TileSpec

    shutil.rmtree(store, ignore_errors=True)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.run(lambda: __import__("wsimm.encoders").encoders.create_encoder("test_tiny"))
        with get_task_stream(client) as ts:
            t = time.perf_counter()
            rep = tile_slides([slides_dir], store, spec=TileSpec(mpp=0.5, tile_px=tile_px),
                              scheduler=cluster.scheduler_address, quiet=True,
                              encoder="test_tiny")  # fmt: skip
            wall = time.perf_counter() - t
    assert not rep.failed, rep.failed
    busy: dict[str, list[float]] = {}
    task_s = 0.0
    for rec in ts.data:
        for s in rec["startstops"]:
            if s["action"] == "compute":
                task_s += s["stop"] - s["start"]
                w = busy.setdefault(rec["worker"], [s["start"], s["stop"]])
                w[0], w[1] = min(w[0], s["start"]), max(w[1], s["stop"])
    window = sum(b - a for a, b in busy.values())
    return {"tiles": rep.tiles, "wall": wall, "tasks": len(ts.data), "task_s": task_s,
            "window": window}  # fmt: skip


def main() -> None:
    from wsimm.testing import write_synthetic_slide

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    work = a.dir or tempfile.mkdtemp(prefix="wsimm-bench-scaling-")
    slides = os.path.join(work, "slides")
    for i in range(a.slides):
        p = os.path.join(slides, f"s{i:02d}.svs")
        if not os.path.exists(p):
            write_synthetic_slide(p, width=6144, height=4608, seed=i, mpp=0.25)
    rows = {n: run(slides, os.path.join(work, f"w{n}.zarr"), n, a.tile_px) for n in (1, 2)}
    print(f"\n{a.slides} slides of 6144 x 4608 px at 0.25 µm/px, {a.tile_px} px tiles at "
          f"0.5 µm/px, test_tiny encoder, {os.cpu_count()} cores\n")  # fmt: skip
    print(f"{'workers':<9}{'tiles':>7}{'seconds':>9}{'tiles/s':>9}{'tasks':>7}{'overhead':>10}")
    for n, r in rows.items():
        over = 1 - r["task_s"] / r["window"] if r["window"] else float("nan")
        r["rate"] = r["tiles"] / r["wall"]
        print(f"{n:<9}{r['tiles']:>7}{r['wall']:>9.2f}{r['rate']:>9.0f}{r['tasks']:>7}"
              f"{over:>10.1%}")  # fmt: skip
    print(
        f"\nscaling 2 / 1 workers: {rows[2]['rate'] / rows[1]['rate']:.2f}x"
        "   (2 cores; the ideal is 2.0)"
    )


if __name__ == "__main__":
    main()
