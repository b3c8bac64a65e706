"""Synthetic-slide write speed (megapixels/s) and peak memory.

Each size is written in a fresh subprocess so its peak RSS is its own. Baselines measured in
the same run:

- the JPEG-encode ceiling: the same number of 256 x 256 textured tiles JPEG-encoded by
  imagecodecs on the same threads, no rendering and no file (``write / encode`` ratio);
- memory flatness: peak RSS of the full size divided by that of a quarter-area slide
  (target: about 1, i.e. memory does not grow with slide size; target < 1 GiB absolute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
from wsimm.testing import write_synthetic_slide
w, h, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
s = write_synthetic_slide(path, width=w, height=h, seed=1, pen_marks=("blue", "green"),
                          debris=True, folds=True)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "rss_mb": rss, "levels": list(s.level_downsamples),
                  "tissue": float(s.tissue.mean())}))
"""


def run_child(w: int, h: int, path: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(w), str(h), path],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["file_mb"] = os.path.getsize(path) / 2**20
    os.remove(path)
    return res


def encode_ceiling(n_tiles: int, workers: int) -> float:
    """Seconds to JPEG-encode ``n_tiles`` textured 256x256 tiles (q=80) on ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs
    import numpy as np

    rng = np.random.default_rng(0)
    tile = np.clip(rng.normal(180, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
    tiles = [np.roll(tile, k, axis=0) for k in range(8)]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda i: imagecodecs.jpeg_encode(tiles[i % 8], level=80), range(n_tiles)))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--height", type=int, default=80_000)
    args = ap.parse_args()
    w, h = args.width, args.height
    with tempfile.TemporaryDirectory() as d:
        run_child(2048, 2048, os.path.join(d, "warm.svs"))  # warm the atlas cache on disk
        small = run_child(w // 2, h // 2, os.path.join(d, "small.svs"))
        big = run_child(w, h, os.path.join(d, "big.svs"))
    mp = w * h / 1e6
    # tiles actually rendered+encoded: level 0 plus pyramid (~1/16 + 1/256 ...)
    total_px = sum((w / d) * (h / d) for d in big["levels"])
    n_tiles = int(total_px / 256**2)
    ceiling_s = (
        encode_ceiling(min(n_tiles, 20000), os.cpu_count() or 1) * n_tiles / min(n_tiles, 20000)
    )
    print(f"synthetic slide {w} x {h} ({mp:,.0f} MP), levels {big['levels']}, "
          f"tissue {big['tissue']:.0%}")  # fmt: skip
    print(f"  write: {big['seconds']:.1f} s = {mp / big['seconds']:.1f} MP/s (level 0), "
          f"file {big['file_mb']:.0f} MiB")  # fmt: skip
    print(f"  JPEG-encode ceiling for the same {n_tiles} tiles: {ceiling_s:.1f} s "
          f"-> write/encode time ratio {big['seconds'] / ceiling_s:.2f}")  # fmt: skip
    ratio = big["rss_mb"] / small["rss_mb"]
    print(f"  peak RSS: {big['rss_mb']:.0f} MiB (target < 1024 MiB); quarter-area slide "
          f"{small['rss_mb']:.0f} MiB -> ratio {ratio:.2f} (target ~1: flat)")  # fmt: skip


if __name__ == "__main__":
    main()
