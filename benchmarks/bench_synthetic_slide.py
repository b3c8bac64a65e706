"""Synthetic-slide write speed (megapixels/s) and peak memory.

Each size is written in a fresh subprocess so its peak RSS is its own. Baselines measured in
the same run:

- the JPEG-encode ceiling: the tiles the slide itself wrote (read back and decoded, untimed),
  JPEG-encoded again by imagecodecs at the writer's quality on the same threads, no rendering
  and no file (``write / encode`` ratio). Tiles of a real slide encode faster than noise, so
  this is the ceiling for this writer's output, not for random pixels;
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


def run_child(w: int, h: int, path: str, *, keep: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(w), str(h), path],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["file_mb"] = os.path.getsize(path) / 2**20
    if not keep:
        os.remove(path)
    return res


def encode_ceiling(path: str, workers: int, sample: int = 6000) -> tuple[float, int]:
    """Seconds to JPEG-encode (q=80, the writer's quality) every tile the slide at ``path``
    holds on ``workers`` threads, measured on an even sample of its tiles over all levels
    (decoded first, untimed) and scaled to the total; and the number of tiles."""
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs
    import numpy as np
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = [lv.keyframe for lv in tf.series[0].levels]
        every = [(pg, i) for pg in pages for i in range(len(pg.dataoffsets))]
        pick = np.linspace(0, len(every) - 1, min(sample, len(every))).astype(int)
        fh = tf.filehandle
        tiles = []
        for j in pick:
            pg, i = every[j]
            fh.seek(pg.dataoffsets[i])
            data = fh.read(pg.databytecounts[i])
            tiles.append(pg.decode(data, i, jpegtables=pg.jpegtables)[0][0])
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda x: imagecodecs.jpeg_encode(x, level=80), tiles))
    return (time.perf_counter() - t) * len(every) / len(tiles), len(every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--height", type=int, default=80_000)
    args = ap.parse_args()
    w, h = args.width, args.height
    with tempfile.TemporaryDirectory() as d:
        run_child(2048, 2048, os.path.join(d, "warm.svs"))  # warm the atlas cache on disk
        small = run_child(w // 2, h // 2, os.path.join(d, "small.svs"))
        big = run_child(w, h, os.path.join(d, "big.svs"), keep=True)
        ceiling_s, n_tiles = encode_ceiling(os.path.join(d, "big.svs"), os.cpu_count() or 1)
    mp = w * h / 1e6
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
