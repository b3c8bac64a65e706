"""Train ABMIL to grade slides (tumour vs normal), then draw a heatmap of a held-out slide.

Offline on 16 synthetic slides (half with tumour) tiled with the ``test_tiny`` encoder:
patient-level 4-fold cross-validation, metrics, predictions, and the out-of-fold attention
heatmap of a tumour slide (PNG, pyramidal TIFF, QuPath GeoJSON, gallery).

    python examples/train_abmil_grading.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> Path:
    from wsimm.heatmap import make_heatmaps
    from wsimm.pipeline import tile_slides
    from wsimm.testing import write_synthetic_slide
    from wsimm.tiling import TileSpec
    from wsimm.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wsimm-example-"))
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for i in range(16):
        tumour = i % 2 == 0
        write_synthetic_slide(out / "slides" / f"S{i:02d}.svs", width=2048, height=1536,
                              seed=100 + i, mpp=0.5,
                              tumour_fraction=0.3 if tumour else 0.0)  # fmt: skip
        rows.append((f"P{i:02d}", f"S{i:02d}", "tumour" if tumour else "normal"))
    labels = out / "labels.csv"
    pd.DataFrame(rows, columns=["patient_id", "slide_id", "label"]).to_csv(labels, index=False)

    store = out / "cohort.zarr"
    tile_slides(
        [out / "slides"], store, spec=TileSpec(mpp=0.5, tile_px=64), quiet=True, encoder="test_tiny"
    )
    run = train(store=str(store), labels=str(labels), task="grade", label_col="label",
                model="abmil", folds=4, epochs=20, out=str(out / "run"),
                overwrite=True)  # fmt: skip
    print(json.dumps(run.metrics["mean"], indent=1))

    rep = make_heatmaps(out / "run", store, out / "heatmaps", slides=["S00"])
    print(f"heatmap files: {rep.results[0].get('files', rep.results[0].get('error'))}")
    return out


if __name__ == "__main__":
    main()
