"""One training epoch with bags read from the feature store vs the same epoch from bags
already in RAM, in the same run.

Both epochs run the trainer's own batching path (``BagSource.batches``: ragged batches built
ahead in threads, normalisation, transfer) and the same ABMIL forward/backward/AdamW step on
the same bag order. ``ram`` preloads every bag with ``cache=True`` first; ``store`` reads each
bag from Zarr when its batch is built (``cache=False``), so any read cost not hidden behind
compute shows up. Before every store epoch the store's pages are dropped from the page cache
(``posix_fadvise(DONTNEED)`` on each file), so it reads from disk as a first epoch does; the
two epochs alternate in order over ``--rounds`` rounds and the ratio is pooled over them.
Target (issue 5): store / ram <= 1.15.

    python benchmarks/bench_train.py                          # 150 bags x 5-8k tiles x 1024-d
    python benchmarks/bench_train.py --bags 1000 --device cuda
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def epoch(source, ids, model, opt, device, batch_size, workers) -> float:
    import torch
    import torch.nn.functional as F

    order = [list(range(i, min(i + batch_size, len(ids)))) for i in range(0, len(ids), batch_size)]
    y = torch.as_tensor(np.arange(len(ids)) % 2, device=device)
    t0 = time.perf_counter()
    for b in source.batches(ids, order, per_slide=False, device=device, workers=workers):
        out = model(b.x, b.batch, b.n_bags)
        loss = F.cross_entropy(out.logits, y[b.index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def evict(root: Path) -> int:
    """Drop every file of ``root`` from the page cache (clean pages go at once); the bytes."""
    total = 0
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bags", type=int, default=150)
    ap.add_argument("--tiles", type=int, nargs=2, default=(5000, 8000))
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2, help="ram/store epoch pairs, alternating")
    ap.add_argument("--dir", default=None, help="Where to write the store (default: a tmp dir).")
    a = ap.parse_args()

    import torch

    from wsimm.mil import create_model
    from wsimm.testing import bags_to_store
    from wsimm.train import BagSource

    root = Path(a.dir or tempfile.mkdtemp(prefix="wsimm-bench-train-"))
    store = root / "bench.zarr"
    rng = np.random.default_rng(0)
    sizes = rng.integers(a.tiles[0], a.tiles[1] + 1, a.bags)
    t0 = time.perf_counter()
    if not store.exists():
        for start in range(0, a.bags, 20):  # write in groups to keep memory flat
            bags = {
                f"B{i:05d}": rng.standard_normal((int(sizes[i]), a.dim)).astype(np.float16)
                for i in range(start, min(a.bags, start + 20))
            }
            bags_to_store(bags, store)
    ids = [f"B{i:05d}" for i in range(a.bags)]
    slides = {i: [i] for i in ids}
    gib = sizes.sum() * a.dim * 2 / 2**30
    print(
        f"{a.bags} bags, {sizes.sum():,} tiles x {a.dim}-d float16 = {gib:.2f} GiB "
        f"(store written in {time.perf_counter() - t0:.0f} s)"
    )

    def fresh():
        torch.manual_seed(0)
        m = create_model("abmil", a.dim, 2).to(a.device)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-4)

    ram = BagSource(str(store), slides, cache=True)
    t0 = time.perf_counter()
    for i in ids:
        ram.slide(i)
    load = time.perf_counter() - t0
    m, o = fresh()
    epoch(ram, ids[: 2 * a.batch_size], m, o, a.device, a.batch_size, a.workers)  # warm-up
    disk = BagSource(str(store), slides, cache=False)

    def run(kind: str) -> float:
        m, o = fresh()
        if kind == "ram":
            return epoch(ram, ids, m, o, a.device, a.batch_size, a.workers)
        evict(store)  # cold: as the first epoch of a run reads it
        return epoch(disk, ids, m, o, a.device, a.batch_size, a.workers)

    times: dict[str, list[float]] = {"ram": [], "store": []}
    for r in range(a.rounds):
        for kind in ("ram", "store") if r % 2 == 0 else ("store", "ram"):
            times[kind].append(run(kind))
    t_ram, t_store = sum(times["ram"]), sum(times["store"])
    print(f"preload into RAM: {load:.1f} s ({gib / load:.2f} GiB/s)")
    print(f"epochs from RAM:   {', '.join(f'{t:.1f}' for t in times['ram'])} s")
    print(f"epochs from store: {', '.join(f'{t:.1f}' for t in times['store'])} s (cold cache)")
    print(f"store / ram = {t_store / t_ram:.3f} pooled over {a.rounds} alternating rounds "
          "(target <= 1.15)")  # fmt: skip
    if a.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
