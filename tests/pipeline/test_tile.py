from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from wsimm.pipeline import tile_slides
from wsimm.store import open_store
from wsimm.testing import write_synthetic_slide
from wsimm.tiling import TileSpec


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    for i in range(6):
        write_synthetic_slide(d / f"slide{i}.svs", width=6144, height=4096, seed=i, mpp=0.25,
                              pen_marks=("blue",) if i % 2 else ())  # fmt: skip
    return d


def _snapshot(path):
    fs = open_store(path)
    return {s: (fs.coords(s), fs.features(s)) for s in fs.slides()}


def test_tiles_avoid_pen_and_background(tmp_path):
    sl = write_synthetic_slide(tmp_path / "p.svs", width=8192, height=6144, seed=7, mpp=0.25,
                               pen_marks=("blue", "green", "red"))  # fmt: skip
    rep = tile_slides([tmp_path / "p.svs"], tmp_path / "c.zarr", quiet=True, workers=2,
                      qc_dir=tmp_path / "qc", encoder="test_tiny")  # fmt: skip
    assert not rep.failed and (tmp_path / "qc" / "p.png").exists()
    fs = open_store(tmp_path / "c.zarr")
    coords = fs.coords("p")
    size0 = fs.slide_attrs("p")["tile_size0"]
    ds = sl.mask_downsample
    # the ground truth under each tile: almost no ink, mostly tissue
    pen_frac, tissue_frac = [], []
    for x, y in coords:
        sl_y, sl_x = slice(y // ds, int((y + size0) // ds)), slice(x // ds, int((x + size0) // ds))
        pen_frac.append(sl.pen[sl_y, sl_x].mean())
        tissue_frac.append(sl.tissue[sl_y, sl_x].mean())
    assert (np.array(pen_frac) > 0.5).sum() == 0  # no tile lies mostly over ink
    assert np.min(tissue_frac) >= 0.2
    # tile count x tile area within 25% of the mask area (at min_tissue 0.25)
    tm, mds = fs.tissue_mask("p")
    mask_area = tm.sum() * mds * mds
    assert len(coords) * size0**2 == pytest.approx(mask_area, rel=0.25)


def test_rerun_skips_and_param_change_needs_overwrite(cohort_dir, tmp_path):
    store = tmp_path / "c.zarr"
    r1 = tile_slides([cohort_dir], store, quiet=True, workers=2, encoder="test_tiny")
    assert [r.status for r in r1.results] == ["done"] * 6
    r2 = tile_slides([cohort_dir], store, quiet=True, workers=2, encoder="test_tiny")
    assert [r.status for r in r2.results] == ["skipped"] * 6
    r3 = tile_slides(
        [cohort_dir / "slide0.svs"],
        store,
        spec=TileSpec(tile_px=128),
        quiet=True,
        encoder="test_tiny",
    )
    assert r3.failed and "--overwrite" in r3.failed[0].error
    assert "slide0" in open_store(store).slides()  # untouched
    r4 = tile_slides([cohort_dir / "slide0.svs"], store, spec=TileSpec(tile_px=128),
                     quiet=True, overwrite=True, encoder="test_tiny")  # fmt: skip
    assert not r4.failed
    assert open_store(store).slide_attrs("slide0")["tile_px"] == 128


def test_bad_slides_do_not_stop_the_batch(cohort_dir, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    blank = write_synthetic_slide(tmp_path / "blank.svs", width=2048, height=2048,
                                  tissue_fraction=0.0).path  # fmt: skip
    rep = tile_slides(
        [cohort_dir / "slide1.svs", bad, blank],
        tmp_path / "c.zarr",
        quiet=True,
        encoder="test_tiny",
    )
    status = {r.slide_id: r for r in rep.results}
    assert status["slide1"].status == "done"
    assert status["bad"].status == "failed" and "bad.svs" in status["bad"].error
    assert status["blank"].status == "failed" and "no tissue" in status["blank"].error
    assert open_store(tmp_path / "c.zarr").all_slide_ids() == ["slide1"]


def test_coordinates_only(cohort_dir, tmp_path):
    rep = tile_slides([cohort_dir / "slide2.svs"], tmp_path / "c.zarr", encoder="none", quiet=True)
    assert not rep.failed
    fs = open_store(tmp_path / "c.zarr")
    assert fs.encoders("slide2") == [] and len(fs.coords("slide2")) > 0


def test_sigkill_then_rerun_equals_uninterrupted_run(cohort_dir, tmp_path):
    ref = tmp_path / "ref.zarr"
    # three slides on a dense grid (16 tiles per tile area), so the run lasts long enough to
    # be killed after its first slide and before its last
    slides = [cohort_dir / f"slide{i}.svs" for i in range(3)]
    spec = TileSpec(mpp=0.25, overlap=0.75)
    tile_slides(slides, ref, quiet=True, workers=1, spec=spec, encoder="test_tiny")
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "wsimm_cli.main", "tile", *map(str, slides), "--store", str(store),
           "--mpp", "0.25", "--overlap", "0.75", "--workers", "1", "--encoder", "test_tiny",
           "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_mid_run = False
    while time.time() < deadline and proc.poll() is None:
        if (store / "slides").exists():
            try:
                done = open_store(store).slides()
            except Exception:
                done = []
            if len(done) >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                killed_mid_run = True
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed"
    partial = open_store(store)
    assert 1 <= len(partial.slides()) < 3
    rep = tile_slides(slides, store, quiet=True, workers=1, spec=spec, encoder="test_tiny")
    assert not rep.failed
    assert {r.status for r in rep.results} == {"done", "skipped"}
    a, b = _snapshot(ref), _snapshot(store)
    assert sorted(a) == sorted(b) == [f"slide{i}" for i in range(3)]
    for k in a:
        assert np.array_equal(a[k][0], b[k][0])
        assert np.array_equal(a[k][1], b[k][1])
    assert sorted(open_store(store).all_slide_ids()) == sorted(a)


def test_task_sizes_balance_threads_in_whole_batches():
    from wsimm.pipeline._tile import _task_tiles

    assert _task_tiles(6164, 1, 32) == 1024  # one thread: nothing to balance
    assert _task_tiles(100_000, 2, 64) == 1024  # big slides: the cap
    for n, threads, bs in [(6164, 2, 64), (2500, 2, 32), (777, 4, 32), (300, 2, 64)]:
        task = _task_tiles(n, threads, bs)
        assert task % bs == 0 and 128 <= task <= 1024
        assert -(-n // task) >= min(4 * threads, -(-n // 128)) - 1


def test_read_ahead_thread_runs_at_lower_priority():
    import threading

    from wsimm.pipeline._tile import _lower_priority

    if not hasattr(os, "getpriority") or not hasattr(threading, "get_native_id"):
        pytest.skip("per-thread priorities are a Linux feature")
    seen = {}
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def work():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        _lower_priority()
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, tid) - before

    th = threading.Thread(target=work)
    th.start()
    th.join()
    assert seen["delta"] > 0
    # only the calling thread is lowered, not the process's other threads
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
