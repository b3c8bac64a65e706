"""``wsimm embed``: add an encoder's features to a store without re-tiling.

Each complete slide's tiles are re-read from its source file at the stored coordinates and
grid (level, read size, exact resampling), encoded, and written as ``features/<encoder>``;
the array is marked complete last, so a killed run leaves nothing a reader would see.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from wsimm.errors import ConfigError, DataError
from wsimm.pipeline._tile import (
    SlideResult,
    TileReport,
    _client,
    _count_tiles,
    _encoder,
    _submit_chunks,
    default_workers,
    locate_source,
)

__all__ = ["embed_store"]


def embed_store(
    store: str | os.PathLike[str],
    encoder: str,
    *,
    weights: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    slides: list[str] | None = None,
    slides_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> TileReport:
    """Encode every complete slide of ``store`` (or the ``slides`` ids) with ``encoder``.

    Slides already holding this encoder's features with the same weights are skipped; with
    other weights they fail unless ``overwrite``. ``slides_dir`` finds source files that moved
    (by file name). A source whose contents changed since tiling is refused.
    """
    from distributed import as_completed

    from wsimm._progress import progress
    from wsimm.store import encoder_id, open_store

    t_start = time.perf_counter()
    if encoder in (None, "none"):
        raise ConfigError("wsimm embed needs an --encoder")
    open_store(store)  # refuses a missing, foreign or damaged store (embed never makes one)
    enc = _encoder(encoder, weights, device)
    fs = open_store(store, "a")
    report = TileReport(store=fs.path)
    eid = encoder_id(encoder)
    with fs.lock():
        ids = fs.slides()
        if slides:
            unknown = sorted(set(slides) - set(ids))
            if unknown:
                raise ConfigError(f"{fs.path}: no complete slides {', '.join(unknown)}")
            ids = [i for i in ids if i in set(slides)]
        jobs: dict[str, dict[str, Any]] = {}
        for sid in ids:
            a = fs.slide_attrs(sid)
            src = a.get("source", "")
            path = str(Path(slides_dir) / Path(src).name) if slides_dir else src
            if eid in fs.encoders(sid):
                old = fs.feature_attrs(sid, encoder).get("weights_fingerprint")
                if old == enc.weights_fingerprint and not overwrite:
                    report.results.append(SlideResult(sid, path, "skipped", a.get("n_tiles", 0)))
                    continue
                if not overwrite:
                    report.results.append(SlideResult(sid, path, "failed", error=(
                        f"{fs.path}: slide {sid!r} already has {encoder} features from other "
                        "weights; pass --overwrite to replace them")))  # fmt: skip
                    continue
            try:
                locate_source(a, sid, slides_dir)
            except DataError as e:
                report.results.append(SlideResult(sid, path, "failed", error=str(e)))
                continue
            jobs[sid] = {
                "slide_id": sid,
                "path": path,
                "slide_mpp": a.get("params", {}).get("slide_mpp_override"),
                "store": fs.path,
                "encoder": encoder,
                "weights": weights,
                "device": device,
                "batch_size": batch_size,
                "stain": a.get("stain_model"),  # the slide's own normalisation, if tiled so
            }
        if jobs:
            _run_embed(jobs, fs, report, workers or default_workers(enc), scheduler, quiet,
                       as_completed, progress)  # fmt: skip
    report.seconds = time.perf_counter() - t_start
    return report


def _run_embed(jobs, fs, report, workers, scheduler, quiet, as_completed, progress) -> None:
    from wsimm.tiling import grid_from_store

    client, cluster = _client(workers, scheduler)
    futs: dict[Any, tuple[str, str, int]] = {}
    ac = as_completed([])
    pending: dict[str, int] = {}
    done: dict[str, int] = dict.fromkeys(jobs, 0)
    t0 = {sid: time.perf_counter() for sid in jobs}
    failed: set[str] = set()
    try:
        with progress(quiet=quiet) as bar:
            grids = {sid: grid_from_store(fs, sid) for sid in jobs}
            total = sum(len(g.coords) for g in grids.values())
            t_tiles = bar.add_task("tiles", total=total, rate="")
            started = time.perf_counter()
            for sid, job in jobs.items():
                grid = grids.pop(sid)
                pending[sid] = _submit_chunks(client, fs, job, grid, futs, ac)
            for fut in ac:
                _, sid, _n = futs.pop(fut)
                if sid in failed:
                    continue
                try:
                    n = fut.result()
                except Exception as e:  # one bad slide does not stop the others
                    failed.add(sid)
                    report.results.append(SlideResult(sid, jobs[sid]["path"], "failed", error=(
                        f"{jobs[sid]['path']}: {type(e).__name__}: {e}")))  # fmt: skip
                    continue
                _count_tiles(bar, t_tiles, done, sid, n, started)
                pending[sid] -= 1
                if pending[sid] == 0:
                    fs.finish_features(sid, jobs[sid]["encoder"])
                    report.results.append(SlideResult(sid, jobs[sid]["path"], "done", done[sid],
                                                      time.perf_counter() - t0[sid]))  # fmt: skip
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            from wsimm.slide import clear_cache

            clear_cache()  # the in-process workers' open slides
