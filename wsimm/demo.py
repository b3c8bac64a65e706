"""``wsimm demo``: the whole pipeline on a synthetic cohort wsimm generates itself.

The demo grows with the pipeline. Today it writes a small synthetic cohort (slide files,
labels, clinical and omics tables), reads every slide back through the slide readers, tiles
every slide into a Zarr feature store with QC images, trains ABMIL with patient-level folds,
draws heatmaps of a few slides, and writes a report.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsimm._progress import progress

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """What the demo produced: its folder, the files it wrote, and per-step timings."""

    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    out: str | os.PathLike[str] = "wsimm-demo",
    *,
    n_patients: int = 12,
    seed: int = 0,
    slide_size: tuple[int, int] = (4096, 3072),
    quiet: bool = False,
) -> DemoResult:
    """Run the demo pipeline into ``out`` and return what it made.

    Steps: (1) synthetic cohort with slide files and tables, (2) slide metadata through the
    readers, (3) ``wsimm tile`` into ``out/features.zarr`` with the ``test_tiny`` encoder and
    QC images in ``out/qc``, (4) ``wsimm train`` (ABMIL, 3 patient-level folds) into
    ``out/run`` and (5) ``wsimm heatmap`` of three slides into ``out/heatmaps`` when torch is
    installed. ``out/report.json`` records every step with its timing.
    """
    from wsimm.slide import inspect_slides
    from wsimm.testing import make_cohort

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=root)

    with progress(quiet=quiet) as bar:
        t0 = time.perf_counter()
        task = bar.add_task("synthetic cohort", total=1, rate="")
        cohort = make_cohort(
            n_patients,
            seed=seed,
            slides="files",
            slide_dir=root / "slides",
            slide_size=slide_size,
            p_multi_slide=0.2,
        )
        res.files.update(cohort.save(root / "tables"))
        bar.update(task, advance=1)
        res.steps.append(
            {
                "step": "cohort",
                "patients": n_patients,
                "slides": len(cohort.slide_paths),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )

        t0 = time.perf_counter()
        paths = [str(p) for p in cohort.slide_paths.values()]
        task = bar.add_task("read slides", total=len(paths), rate="")
        infos = []
        for p in paths:
            infos.extend(inspect_slides(p))
            bar.update(task, advance=1)
        failed = [r.path for r in infos if not r.ok]
        (root / "slides.json").write_text(
            json.dumps([r.info.to_dict() for r in infos if r.info], indent=1)
        )
        res.files["slides_json"] = root / "slides.json"
        res.steps.append(
            {
                "step": "inspect",
                "slides": len(infos),
                "failed": failed,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )

    from wsimm.pipeline import tile_slides

    t0 = time.perf_counter()
    store = root / "features.zarr"
    rep = tile_slides([root / "slides"], store, encoder="test_tiny", qc_dir=root / "qc",
                      quiet=quiet)  # fmt: skip
    res.files["store"] = store
    res.files["qc"] = root / "qc"
    res.steps.append(
        {
            "step": "tile",
            "slides": len(rep.results),
            "done": sum(r.status == "done" for r in rep.results),
            "skipped": sum(r.status == "skipped" for r in rep.results),
            "failed": [r.error for r in rep.failed],
            "tiles": sum(r.tiles for r in rep.results),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )

    if importlib.util.find_spec("torch") is None:
        res.steps.append({"step": "train", "skipped": "torch is not installed", "seconds": 0.0})
    elif n_patients < 9:
        res.steps.append(
            {"step": "train", "skipped": "3-fold CV needs >= 9 patients", "seconds": 0.0}
        )
    else:
        res.steps.append(_train_step(root, res, quiet=quiet, seed=seed))
        res.steps.append(_heatmap_step(root, res, quiet=quiet))

    report = root / "report.json"
    report.write_text(
        json.dumps(
            {"steps": res.steps, "files": {k: str(v) for k, v in res.files.items()}}, indent=1
        )
    )
    res.files["report"] = report
    return res


def _heatmap_step(root: Path, res: DemoResult, *, quiet: bool, n: int = 3) -> dict[str, Any]:
    """``wsimm heatmap`` of the first ``n`` slides (every format) into ``out/heatmaps``."""
    from wsimm.heatmap import make_heatmaps
    from wsimm.store import open_store

    t0 = time.perf_counter()
    slides = open_store(res.files["store"]).slides()[:n]
    rep = make_heatmaps(res.files["run"], res.files["store"], root / "heatmaps", slides=slides,
                        quiet=quiet)  # fmt: skip
    res.files["heatmaps"] = root / "heatmaps"
    return {
        "step": "heatmap",
        "slides": len(rep.results),
        "formats": "png,tiff,geojson,gallery",
        "failed": [f"{r['slide_id']}: {r['error']}" for r in rep.failed],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _train_step(root: Path, res: DemoResult, *, quiet: bool, seed: int) -> dict[str, Any]:
    """``wsimm train`` (ABMIL, grade, 3 patient-level folds) on the demo store."""
    from wsimm.errors import WsimmWarning
    from wsimm.train import train

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WsimmWarning)  # patients without slides are noted
        run = train(
            store=str(res.files["store"]),
            labels=str(res.files["labels"]),
            task="grade",
            out=str(root / "run"),
            model="abmil",
            folds=3,
            epochs=5,
            batch_size=4,
            seed=seed,
            quiet=quiet,
            overwrite=True,
        )
    res.files["run"] = root / "run"
    return {
        "step": "train",
        "model": "abmil",
        "patients": len(run.predictions),
        "auc": round(run.metrics["mean"]["auc"], 3),
        "notes": [str(w.message) for w in caught],
        "failed": [f"fold {k}: {e}" for k, e in run.failed.items()],
        "seconds": round(time.perf_counter() - t0, 3),
    }
