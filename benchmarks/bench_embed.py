"""Tile + embed throughput against the model alone, measured in the same run.

- ``model``: the encoder's forward pass on pre-decoded, pre-normalised tensors
  ``(B, 3, S, S)`` already on the device, the same batch size: the rate no pipeline can beat.
  Timed for 30 s just before and 30 s just after the pipeline, pooled;
- ``coords``: ``tile_slides(encoder=None)``: the planning part (thumbnail, tissue, grid);
- ``pipeline``: ``tile_slides`` with the encoder into a fresh store: decode, resample,
  normalise, forward, write. Reported end to end and for the tile phase (pipeline - coords).

Target (issue 4): pipeline / model >= 0.9 on CPU with ``resnet50_trunc`` (model-bound) and
>= 0.8 on a GPU. Weights are random (saved to a file and loaded through ``--weights``, the
real loading path); speed does not depend on their values.

    python benchmarks/bench_embed.py                          # resnet50_trunc, CPU
    python benchmarks/bench_embed.py --device cuda --encoder uni --size 40000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from _stages import run_stage

CHILD = r"""
import json, os, resource, sys, time
stage, a = sys.argv[1], json.loads(sys.argv[2])
out = {}
if stage == "model":
    import numpy as np, torch
    from wsimm.encoders import create_encoder
    enc = create_encoder(a["encoder"], weights=a["weights"], device=a["device"])
    x = enc.preprocess(np.random.default_rng(0).integers(
        0, 256, (a["batch"], a["tile_px"], a["tile_px"], 3), dtype=np.uint8))
    enc.forward(x)  # warm-up
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < a["seconds"]:
        y = enc.forward(x)
        n += len(x)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    out["tiles"], out["seconds"] = n, time.perf_counter() - t
    out["device"] = str(enc.device)
    if enc.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
else:
    from wsimm.pipeline import tile_slides
    from wsimm.tiling import TileSpec
    enc = None if stage == "coords" else a["encoder"]
    t = time.perf_counter()
    r = tile_slides([a["slide"]], a["store"], encoder=enc, weights=a["weights"],
                    device=a["device"], batch_size=a["batch"], spec=TileSpec(tile_px=a["tile_px"]),
                    workers=a["workers"], quiet=True)
    assert not r.failed, r.failed
    out["tiles"], out["seconds"] = r.tiles, time.perf_counter() - t
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(stage: str, **a) -> dict:
    return run_stage(CHILD, stage, a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="resnet50_trunc")
    ap.add_argument("--weights", default=None, help="weights file (default: random, saved)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--size", type=int, default=12000, help="slide width (height 3/4)")
    ap.add_argument("--workers", type=int, default=None, help="default: wsimm's choice")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="wsimm-bench-embed-")
    os.makedirs(work, exist_ok=True)
    weights = a.weights
    if weights is None:
        import torch

        from wsimm.encoders import create_encoder

        weights = os.path.join(work, f"{a.encoder.replace(':', '_')}.pth")
        if not os.path.exists(weights):
            enc = create_encoder(a.encoder, weights="random", device="cpu")
            torch.save(enc.model.state_dict(), weights)
    slide = os.path.join(work, f"synthetic_{a.size}.svs")
    if not os.path.exists(slide):
        from wsimm.testing import write_synthetic_slide

        write_synthetic_slide(slide, width=a.size, height=a.size * 3 // 4, seed=5, mpp=0.25)
    common = dict(encoder=a.encoder, weights=weights, device=a.device, batch=a.batch,
                  tile_px=a.tile_px, workers=a.workers, slide=slide)  # fmt: skip
    rows = {}
    # the model alone is timed just before and just after the pipeline and the two runs
    # pooled: the machine's speed drifts by several per cent over minutes, and one baseline
    # run on the far side of that drift would decide the ratio
    rows["coords"] = child("coords", store=_fresh(work, "c"), **common)
    before = child("model", seconds=30.0, **common)
    rows["pipeline"] = child("pipeline", store=_fresh(work, "p"), **common)
    after = child("model", seconds=30.0, **common)
    rows["model"] = {
        **after,
        "tiles": before["tiles"] + after["tiles"],
        "seconds": before["seconds"] + after["seconds"],
        "rss_mb": max(before["rss_mb"], after["rss_mb"]),
    }
    print(f"model alone: {before['tiles'] / before['seconds']:.1f} tiles/s before the "
          f"pipeline, {after['tiles'] / after['seconds']:.1f} after")  # fmt: skip
    dev = rows["model"].get("gpu") or rows["model"]["device"]
    print(f"\n{a.encoder} on {dev}, batch {a.batch}, {a.tile_px} px tiles, "
          f"{rows['pipeline']['tiles']} tiles, workers {a.workers or 'default'}\n")  # fmt: skip
    print(f"{'stage':<10}{'seconds':>9}{'tiles/s':>10}{'peak RSS MiB':>14}")
    for k, r in rows.items():
        print(f"{k:<10}{r['seconds']:>9.2f}{r['tiles'] / r['seconds']:>10.1f}{r['rss_mb']:>14.0f}")
    model = rows["model"]["tiles"] / rows["model"]["seconds"]
    e2e = rows["pipeline"]["tiles"] / rows["pipeline"]["seconds"]
    phase = rows["pipeline"]["tiles"] / (rows["pipeline"]["seconds"] - rows["coords"]["seconds"])
    print(f"\npipeline / model: {e2e / model:.2f} end to end, {phase / model:.2f} in the tile "
          "phase (target >= 0.9 on CPU, >= 0.8 on GPU)")  # fmt: skip


def _fresh(work: str, name: str) -> str:
    p = os.path.join(work, name + ".zarr")
    shutil.rmtree(p, ignore_errors=True)
    return p


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"(benchmark wall time {time.perf_counter() - t:.0f} s)")
