"""Read a slide with wsimm: metadata, a region, a thumbnail.

Runs offline on a synthetic slide by default; pass a path to use your own:

    python examples/read_slides.py [SLIDE] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

import wsimm


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", nargs="?", help="a slide file (default: a synthetic slide)")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wsimm-example-"))
    out.mkdir(parents=True, exist_ok=True)
    path = args.slide
    if path is None:
        path = wsimm.write_synthetic_slide(
            out / "synthetic.svs", width=8192, height=6144, pen_marks=("blue",)
        ).path
    with wsimm.open_slide(path) as s:
        info = s.info()
        print(f"{Path(path).name}: {info.width}x{info.height}, {info.level_count} levels, "
              f"{s.mpp} µm/px from {s.mpp_source}, read by {s.backend}")  # fmt: skip
        Image.fromarray(s.get_thumbnail((512, 512))).save(out / "thumbnail.png")
        w, h = s.dimensions
        region = s.read_region((w // 2 - 256, h // 2 - 256), 0, (512, 512))
        Image.fromarray(region).save(out / "centre.png")
    print(f"wrote {out / 'thumbnail.png'} and {out / 'centre.png'}")
    return out


if __name__ == "__main__":
    main()
