"""Run every benchmark at a size fit for a 2-core machine and write one table of their headline
ratios to ``benchmarks/results.md``: each measure, its value, the baseline it is a ratio
against, the command that produced it, the commit and the date.

    python benchmarks/run_all.py                  # all (about 30-40 minutes here)
    python benchmarks/run_all.py --only tile,train
    python benchmarks/run_all.py --out /tmp/results.md

Each benchmark runs as its own process, one after another (none beside another: they would
share the cores), with its full output kept in ``<out>.log``.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (arguments, [(measure, regex on the output, baseline)])
PLAN: dict[str, tuple[list[str], list[tuple[str, str, str]]]] = {
    "synthetic_slide": (
        ["--width", "40000", "--height", "32000"],
        [
            (
                "write / encode time",
                r"write/encode time ratio ([\d.]+)",
                "JPEG re-encoding of the tiles the slide wrote, same threads",
            ),
            (
                "peak RSS full / quarter area",
                r"-> ratio ([\d.]+) \(target ~1",
                "the same writer on a quarter-area slide",
            ),
        ],
    ),
    "tile": (
        ["--width", "40000", "--height", "30000", "--slide-mpp", "0.5", "--repeat", "2"],
        [
            (
                "pipeline / decode ceiling (tile phase)",
                r"end to end, ([\d.]+) in the tile phase",
                "tifffile + imagecodecs decoding the covered TIFF tiles, same threads",
            ),
            (
                "pipeline / naive openslide loop",
                r"naive openslide loop\s*:\s*([\d.]+)x",
                "read_region + PIL resize on the same threads, fastest of the same repeats",
            ),
            (
                "peak RSS big / quarter area",
                r"big / quarter-area\s*:\s*([\d.]+)",
                "the pipeline on a quarter-area slide",
            ),
        ],
    ),
    "embed": (
        ["--size", "20000", "--rounds", "2", "--model-seconds", "15"],
        [
            (
                "pipeline / model alone",
                r"pipeline / model: ([\d.]+)",
                "the encoder's forward pass on decoded tiles in RAM, interleaved rounds",
            ),
        ],
    ),
    "train": (
        ["--bags", "60", "--tiles", "3000", "5000", "--rounds", "2"],
        [
            (
                "epoch from store (cold) / from RAM",
                r"store / ram = ([\d.]+)",
                "the same epoch on bags preloaded in RAM, alternating order",
            ),
        ],
    ),
    "heatmap": (
        ["--width", "40000", "--height", "30000"],
        [
            (
                "peak RSS big / quarter area",
                r"big / quarter-area\s*:\s*([\d.]+)",
                "heatmaps of a quarter-area slide",
            ),
            (
                "peak RSS streamed / canvas",
                r"streamed / canvas\s*:\s*([\d.]+)",
                "an in-memory canvas of the same overlay",
            ),
        ],
    ),
    "mil": (
        ["--quick", "--family", "clusters"],
        [
            (
                "ABMIL / mean-pool LR (AUC, issue 22 cohort)",
                r"abmil / lr_mean mean AUC: ([\d.]+)",
                "logistic regression on mean-pooled features, same folds",
            ),
        ],
    ),
    "view": (
        ["--repeat", "5"],
        [
            (
                "served cold / read_region (256 px tile, real SVS)",
                r"full resolution:.*?ratio cold / read_region\s*: ([\d.]+)",
                "read_region of the same tile on a fresh reader, same thread",
            ),
            (
                "served warm / read_region",
                r"full resolution:.*?ratio warm / read_region\s*: ([\d.]+)",
                "read_region of the same tile on a fresh reader, same thread",
            ),
        ],
    ),
    "scaling": (
        ["--slides", "8"],
        [
            (
                "2 workers / 1 worker (tiles/s)",
                r"scaling 2 / 1 workers: ([\d.]+)x",
                "the same slides on one Dask worker process",
            ),
        ],
    ),
}


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=None, help=f"comma-separated of {', '.join(PLAN)}")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    a = ap.parse_args(argv)
    names = a.only.split(",") if a.only else list(PLAN)
    unknown = sorted(set(names) - set(PLAN))
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(PLAN)}"
        )
    rev, when = commit(), datetime.date.today().isoformat()
    rows, log = [], []
    for name in names:
        args, measures = PLAN[name]
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *args]
        shown = " ".join(["python", f"benchmarks/bench_{name}.py", *args])
        print(f"== {shown}", flush=True)
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - t
        log.append(f"== {shown}  ({took:.0f} s, exit {p.returncode})\n{p.stdout}{p.stderr}")
        for measure, pattern, baseline in measures:
            m = re.search(pattern, p.stdout, re.S)
            value = m.group(1) if (m and p.returncode == 0) else f"failed (exit {p.returncode})"
            rows.append((name, measure, value, baseline, shown))
            print(f"   {measure}: {value}", flush=True)
    lines = [
        "# Benchmark results",
        "",
        f"`python benchmarks/run_all.py` on commit {rev}, {when}; each ratio's baseline was "
        "measured in the same run on the same machine. Full output: "
        f"`{a.out.name}.log` beside this file when written.",
        "",
        "| benchmark | measure | value | baseline | command |",
        "|---|---|---|---|---|",
        *(f"| {n} | {m} | {v} | {b} | `{c}` |" for n, m, v, b, c in rows),
        "",
    ]
    a.out.write_text("\n".join(lines))
    Path(str(a.out) + ".log").write_text("\n".join(log))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
