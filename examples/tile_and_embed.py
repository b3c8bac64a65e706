"""Tile slides into a Zarr feature store, add a second encoder, export CLAM-style h5 files.

Runs offline on three synthetic slides by default; pass a folder of your own slides (and a
real encoder, e.g. ``--encoder resnet50_trunc --weights resnet50.pth``) to use them:

    python examples/tile_and_embed.py [SLIDES_DIR] [--encoder NAME] [--weights PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    from wsimm.pipeline import embed_store, tile_slides
    from wsimm.store import export_h5, open_store
    from wsimm.testing import write_synthetic_slide
    from wsimm.tiling import TileSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slides", nargs="?", help="slide folder (default: synthetic slides)")
    ap.add_argument("--encoder", default="test_tiny", help="registered encoder (wsimm encoders)")
    ap.add_argument("--weights", default=None, help="local weights for --encoder")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wsimm-example-"))
    out.mkdir(parents=True, exist_ok=True)
    slides = args.slides
    if slides is None:
        slides = out / "slides"
        for i in range(3):
            write_synthetic_slide(slides / f"slide-{i}.svs", width=6144, height=4608, seed=i,
                                  mpp=0.25, pen_marks=("blue",) if i == 0 else ())  # fmt: skip

    # 1. tissue detection, a 256 px grid at exactly 0.5 µm/px, the encoder, one store
    store = out / "cohort.zarr"
    rep = tile_slides([slides], store, spec=TileSpec(mpp=0.5, tile_px=256),
                      encoder=args.encoder, weights=args.weights, qc_dir=out / "qc")  # fmt: skip
    for r in rep.results:
        print(f"{r.slide_id}: {r.status}, {r.tiles} tiles {r.error or ''}")

    # 2. a second encoder over the same tiles, without re-tiling
    embed_store(store, "mean_rgb", quiet=True)

    # 3. read it back, and export CLAM/TRIDENT-style h5 files
    fs = open_store(store)
    for sid in fs.slides():
        print(sid, fs.coords(sid).shape, {e: fs.feature_shape(sid, e) for e in fs.encoders(sid)})
    export_h5(store, out / "h5", encoder=args.encoder)
    print(f"store {store}, QC images in {out / 'qc'}, h5 files in {out / 'h5'}")
    return out


if __name__ == "__main__":
    main()
