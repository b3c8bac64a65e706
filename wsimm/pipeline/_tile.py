"""``wsimm tile``: slides -> tissue -> tile grid -> read + encode -> the feature store.

One Dask graph over slides x chunks of tiles, run on a ``dask.distributed`` client: an
in-process local cluster by default (``workers`` threads), or an existing cluster
(``scheduler="tcp://host:port"``). Workers open slides themselves (by path) and write their
feature rows straight into the store; chunks are aligned to the store's Zarr chunks so no two
tasks touch the same chunk. The client writes coordinates when a slide's plan comes back and
marks the slide complete after its last chunk: a killed run leaves only incomplete slides,
which the next run deletes and redoes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsimm._memory import release_memory
from wsimm._progress import progress
from wsimm._version import __version__
from wsimm.errors import ConfigError, DataError, StoreError, WsimmError
from wsimm.tiling import TileSpec
from wsimm.tissue import TissueParams, resolve_tissue_params

__all__ = ["SlideResult", "TileReport", "tile_slides"]


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str  # done | skipped | failed
    tiles: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class TileReport:
    store: str
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def tiles(self) -> int:
        return sum(r.tiles for r in self.results if r.status == "done")


def fingerprint(path: str) -> str:
    """Size + SHA-1 of the first and last MiB: cheap, and changes when the file does."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        h = hashlib.sha1()
        for q in files:
            h.update(f"{q.name}:{q.stat().st_size}".encode())
        return f"dir:{len(files)}:{h.hexdigest()[:16]}"
    size = p.stat().st_size
    h = hashlib.sha1()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"{size}:{h.hexdigest()[:16]}"


def locate_source(
    attrs: dict[str, Any], slide_id: str, slides_dir: str | os.PathLike[str] | None = None
) -> str:
    """The slide file a store entry was tiled from (looked up by name in ``slides_dir`` when
    the files moved), refused when it is missing or its fingerprint changed since tiling."""
    src = str(attrs.get("source") or "")
    path = str(Path(slides_dir) / Path(src).name) if slides_dir else src
    if not path or not os.path.exists(path):
        raise DataError(
            f"{path or slide_id}: source slide of {slide_id!r} not found; pass --slides-dir "
            "DIR where the slide files are now"
        )
    if attrs.get("fingerprint") and fingerprint(path) != attrs["fingerprint"]:
        raise DataError(
            f"{path}: file changed since {slide_id!r} was tiled; re-tile it with wsimm tile "
            "--overwrite"
        )
    return path


# ---------------------------------------------------------------------------------------
# worker-side tasks (module-level functions: they pickle by reference)
def _plan_task(job: dict[str, Any]) -> dict[str, Any]:
    """Open the slide, detect tissue, place tiles, write the QC image. Bad input comes back
    as ``{"error": message}`` (a permanent failure: no retry); other exceptions propagate and
    are retried."""
    try:
        return _plan(job)
    except WsimmError as e:
        return {"error": str(e)}


def _plan(job: dict[str, Any]) -> dict[str, Any]:
    from wsimm.slide import open_slide_cached
    from wsimm.tiling import plan_grid
    from wsimm.tissue import detect_tissue, draw_qc

    s = open_slide_cached(job["path"], mpp=job["slide_mpp"])
    mpp = s.require_mpp()
    # the thumbnail (37 MB at the 4096-px cap) outlives detection only for its two users
    need_thumb = bool(job.get("qc_dir")) or job.get("stain_norm") == "macenko"
    tm = detect_tissue(s, params=job["tissue"], keep_thumbnail=need_thumb)
    spec: TileSpec = job["spec"]
    grid = plan_grid(
        s.dimensions, s.level_downsamples, mpp, spec, mask=tm.mask, mask_downsample=tm.downsample
    )
    stain = None
    if job.get("stain_norm") == "macenko":
        from wsimm.tiling._stain import fit_macenko

        try:
            stain = fit_macenko(tm.thumbnail, tm.mask).to_dict()
        except ConfigError as e:
            raise ConfigError(f"{job['path']}: {e}") from e
    if job.get("qc_dir"):
        draw_qc(
            tm.thumbnail,
            tm.mask,
            downsample=tm.downsample,
            coords=grid.coords,
            tile_size0=grid.size0,
            title=f"{job['slide_id']}: {len(grid)} tiles of {spec.tile_px} px at {spec.mpp:g} "
            f"µm/px (slide level 0: {mpp:g} µm/px)",
            path=Path(job["qc_dir"]) / f"{job['slide_id']}.png",
            mpp=mpp,
        )
    return {
        "coords": grid.coords,
        "tissue_fraction": grid.tissue_fraction,
        "mask": tm.mask,
        "mask_downsample": tm.downsample,
        "attrs": {
            "reader": s.backend,
            "vendor": s.vendor,
            "level0_dims": list(s.dimensions),
            "mpp": mpp,
            "mpp_source": s.mpp_source,
            "read_level": grid.level,
            "read_downsample": grid.level_downsample,
            "tile_size0": grid.size0,
            "stride0": grid.stride0,
            "upsampled": grid.upsampling,
            "tissue_method": tm.method,
            "tissue_threshold": tm.threshold,
            "tissue_area_um2": tm.area_um2,
            "stain_norm": job.get("stain_norm"),
            "stain_model": stain,
        },
        "grid": grid,
        "stain": stain,
    }


_ENCODERS: dict[tuple[str, str | None, str], Any] = {}


def _encoder(name: str, weights: str | None, device: str) -> Any:
    from wsimm.encoders import create_encoder

    key = (name, weights, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = create_encoder(name, weights=weights, device=device)
    return _ENCODERS[key]


def _prefetch(it: Any, depth: int = 2) -> Any:
    """Run a generator in a background thread, ``depth`` items ahead: tile decoding (which
    releases the GIL) overlaps the encoder's forward pass."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        _lower_priority()
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    th = threading.Thread(target=work, daemon=True, name="wsimm-prefetch")
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join(timeout=5)


def _lower_priority(step: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux: ``nice`` is per thread).

    The read-ahead thread decodes a batch in a few per cent of the time the model takes to
    encode one; at normal priority it still preempts one of the model's OpenMP threads now
    and then, and the whole parallel region waits for that thread. At a lower priority it
    runs when a core would otherwise idle, and still gets enough time to stay ahead.
    """
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + step)
    except (AttributeError, OSError):  # not Linux, or not allowed: leave it
        pass


def default_workers(enc: Any) -> int:
    """Local worker threads when ``--workers`` is not given.

    A model on the CPU already uses every core for its forward pass: one task thread (plus
    its read-ahead thread) keeps it busy, and a second thread only contends for the cores
    (measured: 0.93 vs 0.80 of model-only throughput with resnet50_trunc on 2 cores). Cheap
    encoders, coordinates-only runs and GPU models get one thread per core, so tiles are
    decoded in parallel.
    """
    cores = os.cpu_count() or 1
    device = getattr(enc, "device", None)
    if enc is not None and getattr(enc, "model", None) is not None:
        return cores if getattr(device, "type", "cpu") == "cuda" else 1
    return cores


def _chunk_task(job: dict[str, Any], grid: Any, start: int, stop: int) -> int:
    """Read the tiles of ``grid`` (a slide's grid cut down to its rows ``start:stop``), encode
    them in batches, write their rows.

    Reading runs one batch ahead in a helper thread when the encoder is a model (so the
    model never waits for JPEG decoding); cheap encoders read inline.
    """
    from wsimm.slide import open_slide_cached
    from wsimm.store import open_store
    from wsimm.tiling import read_tiles

    s = open_slide_cached(job["path"], mpp=job["slide_mpp"])
    enc = _encoder(job["encoder"], job["weights"], job["device"])
    coords = grid.coords
    assert len(coords) == stop - start
    out = np.empty((len(coords), enc.cfg.embed_dim), np.float32)
    batches = read_tiles(s, grid, coords, job["batch_size"])
    if getattr(enc, "model", None) is not None:
        batches = _prefetch(batches)
    stain = job.get("stain")
    if stain is not None:
        from wsimm.tiling._stain import StainModel, normalize_stains

        model = StainModel.from_dict(stain)
        batches = (normalize_stains(b, model) for b in batches)
    row = 0
    for batch in batches:
        out[row : row + len(batch)] = enc.encode(batch)
        row += len(batch)
    fs = open_store(job["store"], "a")
    fs.write_features(job["slide_id"], job["encoder"], start, out)
    return len(coords)


# ---------------------------------------------------------------------------------------
def _client(workers: int, scheduler: str | None) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as e:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler} ({e}); check --scheduler"
            ) from e
    import dask

    # The in-process cluster shares the GIL and the cores with the tile tasks. Dask's
    # defaults wake its event loop ~150 times a second: the statistical profiler samples
    # every thread each 10 ms (for a dashboard nobody opens here), scheduler and worker
    # each check the loop's health every 20 ms, the worker's memory monitor runs each
    # 100 ms. Every wake-up takes the GIL and a core from the tile tasks (a forward pass
    # needs the GIL between two ops). Slower ticks, no profiler, no work stealing (one
    # worker): measured, a 24k-tile slide tiled 4-7% faster (profiler, monitor), and the
    # event loop's CPU time in a 2,136-tile resnet50 run fell from 7.7 s to 1.9 s.
    quiet_loop = {
        "distributed.worker.profile.enabled": False,
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.admin.tick.interval": "500ms",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.scheduler.work-stealing": False,
    }
    with dask.config.set(quiet_loop):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=max(1, workers),
            processes=False,
            # the scheduler serves HTTP even without a dashboard: on a free port, so
            # concurrent runs do not fight over 8787 (and warn about it)
            dashboard_address="127.0.0.1:0",
            silence_logs=50,
        )
        client = Client(cluster)
    return client, cluster


def _params(
    spec: TileSpec, tissue: TissueParams, slide_mpp: float | None, stain_norm: str | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "target_mpp": spec.mpp,
        "tile_px": spec.tile_px,
        "stride_px": spec.stride_px,
        "overlap": spec.overlap,
        "min_tissue": spec.min_tissue,
        "tissue_params": tissue.to_dict(),
        "slide_mpp_override": slide_mpp,
    }
    if stain_norm:  # only when used, so stores tiled before the option keep matching
        params["stain_norm"] = stain_norm
    if spec.edge_tiles:  # likewise
        params["edge_tiles"] = True
    return params


def tile_slides(
    slides: list[str | os.PathLike[str]] | str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    spec: TileSpec | None = None,
    tissue: TissueParams | str = "default",
    encoder: str | None = "resnet50_trunc",
    weights: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    slide_mpp: float | None = None,
    qc_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    stain_norm: str | None = None,
    quiet: bool = False,
) -> TileReport:
    """Tile slides into a cohort feature store.

    Parameters
    ----------
    slides
        Slide files and folders (see :func:`wsimm.slide.find_slides`).
    store
        The cohort ``.zarr`` store (created when missing).
    spec
        Target µm/px, tile size, overlap and minimum tissue fraction.
    tissue
        :class:`~wsimm.tissue.TissueParams` or a preset name (``default``, ``biopsy``,
        ``resection``).
    encoder
        Registered encoder name (default ``resnet50_trunc``, CLAM's feature extractor: its
        ImageNet weights come from the Hugging Face hub, or from ``weights``), or ``None`` /
        ``"none"`` for coordinates only. ``test_tiny`` and ``mean_rgb`` are for tests: the
        store marks their features so and ``wsimm train`` warns.
    workers, scheduler
        Threads of the local cluster, or the address of an existing Dask scheduler.
    slide_mpp
        Level-0 µm/px for slides that do not record it.
    qc_dir
        Folder for one QC PNG per slide (tissue contour + tile grid).
    overwrite
        Replace complete slides tiled with different parameters (otherwise an error).
    stain_norm
        ``"macenko"``: fit stain vectors per slide (tissue pixels of the thumbnail) and map
        every tile onto the reference H&E stains before encoding; ``None``: raw pixels.

    Returns
    -------
    TileReport
        Per-slide status (done / skipped / failed with the reason), tiles, timings. Slides
        that fail do not stop the others.
    """
    from wsimm.slide import find_slides
    from wsimm.store import open_store
    from wsimm.store._store import discard_if_left_empty, slide_id_from_path

    t_start = time.perf_counter()
    spec = spec or TileSpec()
    tissue = resolve_tissue_params(tissue)
    enc_name = None if encoder in (None, "none") else encoder
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if stain_norm not in (None, "none", "macenko"):
        raise ConfigError(f"--stain-norm must be none or macenko, got {stain_norm!r}")
    if enc_name is not None:
        _encoder(enc_name, weights, device)  # fail fast on an unknown name or bad weights
    paths = find_slides(slides if isinstance(slides, list) else [slides])
    ids: dict[str, str] = {}
    for p in paths:
        sid = slide_id_from_path(p)
        if sid in ids:
            raise ConfigError(
                f"slides {ids[sid]} and {p} would share the slide id {sid!r}; rename one"
            )
        ids[sid] = p
    with discard_if_left_empty(store):  # every slide failed: no empty store left behind
        fs = open_store(store, "a")
        report = _tile_into(fs, ids, spec, tissue, enc_name, weights, batch_size, device,
                            workers, scheduler, slide_mpp, qc_dir, overwrite, stain_norm,
                            quiet)  # fmt: skip
    report.seconds = time.perf_counter() - t_start
    order = {sid: i for i, sid in enumerate(ids)}
    report.results.sort(key=lambda r: order.get(r.slide_id, 0))
    return report


def _tile_into(fs, ids, spec, tissue, enc_name, weights, batch_size, device, workers,
               scheduler, slide_mpp, qc_dir, overwrite, stain_norm,
               quiet) -> TileReport:  # fmt: skip
    """:func:`tile_slides` once its options are checked and the store is open."""
    from distributed import as_completed

    from wsimm.store._store import encoder_id

    report = TileReport(store=fs.path)
    stain_norm = None if stain_norm == "none" else stain_norm
    params = _params(spec, tissue, slide_mpp, stain_norm)
    workers = workers or default_workers(_encoder(enc_name, weights, device) if enc_name else None)

    with fs.lock():
        jobs: dict[str, dict[str, Any]] = {}
        complete = set(fs.slides())  # one listing, not one per slide
        for sid, p in ids.items():
            fp = fingerprint(p) if os.path.exists(p) else None
            if sid in complete:
                old = fs.slide_attrs(sid)
                same = old.get("params") == params and old.get("fingerprint") == fp
                has_enc = enc_name is None or encoder_id(enc_name) in fs.encoders(sid)
                if same and has_enc:
                    report.results.append(SlideResult(sid, p, "skipped", old.get("n_tiles", 0)))
                    continue
                if not same and not overwrite:
                    report.results.append(
                        SlideResult(
                            sid, p, "failed",
                            error=f"{p}: already in the store as {sid!r} with different "
                            "parameters or file contents; pass --overwrite to replace it",
                        )
                    )  # fmt: skip
                    continue
            jobs[sid] = {
                "slide_id": sid,
                "path": p,
                "slide_mpp": slide_mpp,
                "tissue": tissue,
                "spec": spec,
                "qc_dir": os.fspath(qc_dir) if qc_dir else None,
                "store": fs.path,
                "encoder": enc_name,
                "weights": weights,
                "device": device,
                "batch_size": batch_size,
                "fingerprint": fp,
                "stain_norm": stain_norm,
            }
        for sid in fs.all_slide_ids():  # leftovers of a killed run
            if sid not in complete and sid not in jobs:
                fs.delete_slide(sid)

        if jobs:
            _run(jobs, fs, report, params, workers, scheduler, quiet, as_completed)
    return report


def _submit_chunks(client, fs, job, grid, futs, ac) -> int:
    """Create the slide's features array and submit its chunk tasks (aligned to the array's
    Zarr chunks, ~1k tiles each); returns how many were submitted.

    Each task carries only its own rows of the grid (a few KB), never data scattered to one
    worker: when a worker dies, the scheduler reruns its tasks elsewhere with nothing lost.

    A task is at most 1,024 tiles. With several worker threads it is smaller (down to 128,
    in whole batches) when the slide would otherwise give fewer than four tasks per thread:
    a slide of three 1,024-tile tasks on two threads would leave one thread idle through the
    last task.
    """
    enc = _encoder(job["encoder"], job["weights"], job["device"])
    n = len(grid.coords)
    task = _task_tiles(n, _threads(client), job["batch_size"])
    rows = fs.begin_features(
        job["slide_id"], job["encoder"], n=n, dim=enc.cfg.embed_dim, max_rows=task,
        attrs={"encoder": job["encoder"], "cfg": enc.cfg.to_dict(), "weights": job["weights"],
               "weights_fingerprint": enc.weights_fingerprint},
    )  # fmt: skip
    step = rows * max(1, task // rows)
    count = 0
    for a in range(0, n, step):
        b = min(n, a + step)
        part = dataclasses.replace(
            grid, coords=grid.coords[a:b], tissue_fraction=grid.tissue_fraction[a:b]
        )
        f = client.submit(_chunk_task, job, part, a, b, retries=2, pure=False)
        futs[f] = ("chunk", job["slide_id"], b - a)
        ac.add(f)
        count += 1
    return count


def _task_tiles(n: int, threads: int, batch_size: int) -> int:
    """Tiles per chunk task: 1,024, or with several threads fewer (down to 128) so that a
    slide of ``n`` tiles gives each thread about four tasks; a whole number of batches, so
    no task but a slide's last ends with a runt batch."""
    if threads <= 1:
        return 1024
    task = min(1024, max(128, -(-n // (4 * threads))))
    return max(batch_size, -(-task // batch_size) * batch_size)


def _threads(client: Any) -> int:
    """Worker threads of the cluster (at least 1)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # a scheduler that cannot say: assume one thread
        return 1


def _count_tiles(bar, task, done: dict[str, int], sid: str, n: int, started: float) -> None:
    """Book ``n`` finished tiles of ``sid`` and show the overall tiles/s."""
    done[sid] += n
    bar.advance(task, n)
    rate = sum(done.values()) / max(1e-9, time.perf_counter() - started)
    bar.update(task, rate=f"{rate:,.0f} tiles/s")


def _run(jobs, fs, report, params, workers, scheduler, quiet, as_completed) -> None:
    client, cluster = _client(workers, scheduler)
    t0 = {sid: time.perf_counter() for sid in jobs}
    pending: dict[str, int] = {}
    tiles_done: dict[str, int] = dict.fromkeys(jobs, 0)
    failed: set[str] = set()
    try:
        with progress(quiet=quiet) as bar:
            t_slides = bar.add_task("slides", total=len(jobs), rate="")
            t_tiles = bar.add_task("tiles", total=0, rate="")
            started = time.perf_counter()
            total_tiles = 0
            futs = {
                client.submit(_plan_task, job, key=f"plan-{sid}-{os.getpid()}", retries=1): (
                    "plan", sid, 0
                )
                for sid, job in jobs.items()
            }  # fmt: skip
            ac = as_completed(list(futs))
            for fut in ac:
                kind, sid, _ = futs.pop(fut)
                if sid in failed:
                    continue
                job = jobs[sid]
                try:
                    res = fut.result()
                except Exception as e:  # a bad slide must not stop the batch
                    _fail(fs, report, job, e, t0[sid])
                    failed.add(sid)
                    bar.advance(t_slides)
                    continue
                if kind == "plan" and "error" in res:
                    _fail(fs, report, job, WsimmError(res["error"]), t0[sid])
                    failed.add(sid)
                    bar.advance(t_slides)
                    continue
                if kind == "plan":
                    n = len(res["coords"])
                    if n == 0:
                        _fail(fs, report, job, WsimmError(_no_tiles(job, res)), t0[sid])
                        failed.add(sid)
                        bar.advance(t_slides)
                        continue
                    attrs = {
                        **res["attrs"],
                        "source": os.path.abspath(job["path"]),
                        "file_size": _size(job["path"]),
                        "fingerprint": job["fingerprint"],
                        "target_mpp": job["spec"].mpp,
                        "tile_px": job["spec"].tile_px,
                        "stride_px": job["spec"].stride_px,
                        "min_tissue": job["spec"].min_tissue,
                        "tissue_params": job["tissue"].to_dict(),
                        "params": params,
                        "created_by": f"wsimm {__version__}",
                    }
                    fs.begin_slide(
                        sid,
                        coords=res["coords"],
                        tissue_fraction=res["tissue_fraction"],
                        tissue_mask=res["mask"],
                        mask_downsample=res["mask_downsample"],
                        attrs=attrs,
                    )
                    release_memory()  # the mask's compression buffers
                    job["stain"] = res.get("stain")
                    total_tiles += n
                    bar.update(t_tiles, total=total_tiles)
                    if job["encoder"] is None:  # coordinates only: its tiles are done
                        _count_tiles(bar, t_tiles, tiles_done, sid, n, started)
                        _finish(fs, report, job, n, t0[sid])
                        bar.advance(t_slides)
                        continue
                    pending[sid] = _submit_chunks(client, fs, job, res["grid"], futs, ac)
                else:
                    _count_tiles(bar, t_tiles, tiles_done, sid, res, started)
                    pending[sid] -= 1
                    if pending[sid] == 0:
                        fs.finish_features(sid, job["encoder"])
                        _finish(fs, report, job, tiles_done[sid], t0[sid])
                        bar.advance(t_slides)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            from wsimm.slide import clear_cache

            clear_cache()  # the in-process workers' open slides: closed, not left to the GC
    # a slide whose chunk failed: remove its partial group
    for sid in failed:
        if sid in fs.all_slide_ids() and sid not in fs:
            fs.delete_slide(sid)


def _no_tiles(job: dict[str, Any], res: dict[str, Any]) -> str:
    """Why a slide has no tiles: smaller than one tile, or no tissue found."""
    a, spec = res["attrs"], job["spec"]
    w, h = a["level0_dims"]
    side = float(a["tile_size0"])
    if (w < side or h < side) and not spec.edge_tiles:
        return (
            f"{job['path']}: the slide ({w} x {h} px at {a['mpp']:.3g} µm/px) is smaller than "
            f"one {spec.tile_px}-px tile at {spec.mpp} µm/px ({side:.0f} px); use a smaller "
            "--tile-px or a coarser --mpp, or pass --edge-tiles to pad it"
        )
    return (
        f"{job['path']}: no tissue tiles found (tissue area {a['tissue_area_um2'] / 1e6:.3f} "
        "mm²); check --slide-mpp, lower --min-tissue, or use --tissue biopsy"
    )


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _finish(fs, report, job, n, t0) -> None:
    fs.finish_slide(job["slide_id"])
    report.results.append(
        SlideResult(job["slide_id"], job["path"], "done", n, time.perf_counter() - t0)
    )


def _fail(fs, report, job, e: BaseException, t0) -> None:
    if isinstance(e, WsimmError):
        msg = str(e)
    else:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].name}" if tb else ""
        msg = f"{job['path']}: {type(e).__name__}{where}: {e}"
    report.results.append(
        SlideResult(job["slide_id"], job["path"], "failed", 0, time.perf_counter() - t0, msg)
    )
    with contextlib.suppress(StoreError):
        fs.delete_slide(job["slide_id"])
