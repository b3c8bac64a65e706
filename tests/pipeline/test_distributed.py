"""Tiling on a real ``dask.distributed`` cluster (scheduler + worker processes on loopback) that
loses a worker mid-run, and two ``wsimm tile`` runs racing for one store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from wsimm.pipeline import tile_slides
from wsimm.store import open_store
from wsimm.testing import write_synthetic_slide
from wsimm.tiling import TileSpec

SPEC = TileSpec(mpp=0.5, tile_px=64, overlap=0.5)


@pytest.fixture(scope="module")
def twenty_slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort20")
    for i in range(20):
        write_synthetic_slide(d / f"s{i:02d}.svs", width=3072, height=2304, seed=40 + i, mpp=0.5)
    return d


@pytest.fixture(scope="module")
def reference(twenty_slides, tmp_path_factory):
    """The twenty slides tiled by one plain in-process run: what every other run must equal."""
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    rep = tile_slides([twenty_slides], ref, spec=SPEC, workers=1, quiet=True, encoder="test_tiny")
    assert not rep.failed and len(rep.results) == 20
    return _snapshot(ref)


def _snapshot(path):
    fs = open_store(path)
    return {
        s: (fs.coords(s), fs.tissue_fraction(s), fs.features(s, "test_tiny")) for s in fs.slides()
    }


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            assert np.array_equal(x, y), k


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_killed_worker_loses_and_duplicates_nothing(twenty_slides, reference, tmp_path):
    from distributed import Client, LocalCluster

    store = tmp_path / "dist.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:  # fmt: skip
        pids = client.run(os.getpid)
        assert len(pids) == 2 and os.getpid() not in pids.values()
        out: dict = {}
        th = threading.Thread(
            target=lambda: out.update(
                rep=tile_slides(
                    [twenty_slides],
                    store,
                    spec=SPEC,
                    quiet=True,
                    scheduler=cluster.scheduler_address,
                    encoder="test_tiny",
                )
            )
        )
        th.start()
        victim = sorted(pids.values())[0]
        done_at_kill = None
        deadline = time.time() + 300
        while th.is_alive() and time.time() < deadline:
            try:
                done = len(open_store(store).slides()) if (store / "slides").exists() else 0
            except Exception:
                done = 0
            if done >= 2:
                os.kill(victim, signal.SIGKILL)
                done_at_kill = done
                break
            time.sleep(0.01)
        th.join(timeout=600)
        assert not th.is_alive()
    assert done_at_kill is not None and done_at_kill < 20, "the run ended before the kill"
    rep = out["rep"]
    assert not rep.failed, [r.error for r in rep.failed]
    assert sorted(r.slide_id for r in rep.results) == sorted(f"s{i:02d}" for i in range(20))
    _same(reference, _snapshot(store))
    assert sorted(open_store(store).all_slide_ids()) == sorted(reference)


def test_two_concurrent_tile_runs_on_one_store(twenty_slides, reference, tmp_path):
    store = tmp_path / "race.zarr"
    cmd = [sys.executable, "-m", "wsimm_cli.main", "tile", str(twenty_slides), "--store",
           str(store), "--mpp", "0.5", "--tile-px", "64", "--overlap", "0.5", "--workers", "1",
           "--encoder", "test_tiny", "--quiet"]  # fmt: skip
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the second run starts once the first holds the store
    deadline = time.time() + 60
    while not (store / ".wsimm.lock").exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    b = subprocess.run(cmd, capture_output=True, text=True)
    _, a_err = a.communicate(timeout=600)
    assert a.returncode == 0, a_err
    if b.returncode:  # refused while the first run held the store: one clear line
        lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "another wsimm process" in lines[0], b.stderr
        assert "Traceback" not in b.stderr
    # whatever the interleaving, the store is whole and a rerun has nothing left to do
    rep = tile_slides([twenty_slides], store, spec=SPEC, workers=1, quiet=True, encoder="test_tiny")
    assert {r.status for r in rep.results} == {"skipped"}
    _same(reference, _snapshot(store))
