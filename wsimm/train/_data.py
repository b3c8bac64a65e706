"""Bags for training: whole-bag reads from the feature store, an optional in-memory cache,
feature normalisation fitted on training patients, and ragged batches built ahead in threads."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsimm.errors import DataError, WsimmWarning


@dataclass
class Batch:
    """Tiles of several bags concatenated: ``x`` ``(N, D)`` float32, ``batch`` the bag of
    each tile, and, when slides are separate bags, ``group`` the patient of each bag."""

    x: object
    batch: object
    n_bags: int
    group: object | None
    n_groups: int
    index: np.ndarray  # positions of the batch's patients in the list passed in


#: encoders made for tests, by name (stores written before the flag in their config)
TEST_ENCODERS = ("test_tiny", "mean_rgb")


def _warn_test_encoder(fs: Any, slide_id: str, encoder: str) -> None:
    """A warning when the features come from an encoder made for tests: a model trained on
    them says nothing about the tissue."""
    fa = fs.feature_attrs(slide_id, encoder)
    flagged = bool(((fa.get("cfg") or {}).get("extra") or {}).get("test_encoder"))
    if flagged or fa.get("encoder") in TEST_ENCODERS:
        warnings.warn(
            f"{fs.path}: the {fa.get('encoder', encoder)!r} features come from a test encoder "
            "(pixels pooled and projected, not image features), so this model says nothing "
            "about the tissue; tile with a real encoder (wsimm tile --encoder resnet50_trunc, "
            "uni, ...) for results to report",
            WsimmWarning,
            stacklevel=3,
        )


class BagSource:
    """Patients' bags from a feature store.

    ``slides`` maps patient id -> slide ids. ``encoder`` picks the features when slides have
    several; with ``None`` the encoder every slide has is used. ``cache``: keep bags in RAM
    after the first read (``"auto"``: when they fit in a quarter of the available memory).
    """

    def __init__(
        self,
        store: str,
        slides: dict[str, list[str]],
        *,
        encoder: str | None = None,
        cache: bool | str = "auto",
    ) -> None:
        from wsimm.store import encoder_id, open_store

        self.fs = open_store(store)
        self.slides = slides
        all_slides = [s for v in slides.values() for s in v]
        have = {s: set(self.fs.encoders(s)) for s in all_slides}  # one metadata read each
        if encoder is None:
            common = set.intersection(*have.values()) if have else set()
            if not common:
                raise DataError(
                    f"{self.fs.path}: the slides share no encoder's features; run wsimm embed "
                    "or pass --encoder"
                )
            if len(common) > 1:
                raise DataError(
                    f"{self.fs.path}: slides have features from {sorted(common)}; choose one "
                    "with --encoder"
                )
            encoder = common.pop()
        self.encoder = encoder_id(encoder)
        lacking = [s for s in all_slides if self.encoder not in have[s]]
        if lacking:
            raise DataError(
                f"{self.fs.path}: {len(lacking)} slide(s) have no {self.encoder!r} features "
                f"({', '.join(lacking[:5])}); add them with wsimm embed --encoder {encoder}"
            )
        dims = {self.fs.feature_shape(s, self.encoder)[1] for s in all_slides}
        if len(dims) != 1:
            raise DataError(f"{self.fs.path}: {self.encoder!r} features differ in width {dims}")
        self.dim = dims.pop()
        _warn_test_encoder(self.fs, all_slides[0], self.encoder)
        self._cache: dict[str, np.ndarray] | None = None
        if cache == "auto":
            cache = self._fits_in_memory(all_slides)
        if str(cache).lower() == "true" or cache is True:
            self._cache = {}
        self._lock = threading.Lock()

    def _fits_in_memory(self, slides: list[str]) -> bool:
        import psutil

        total = sum(int(self.fs.slide_attrs(s).get("n_tiles", 0)) for s in slides)
        return total * self.dim * 2 < psutil.virtual_memory().available / 4

    def slide(self, sid: str) -> np.ndarray:
        if self._cache is not None and sid in self._cache:
            return self._cache[sid]
        x = self.fs.features(sid, self.encoder)
        if self._cache is not None:
            with self._lock:
                self._cache[sid] = x
        return x

    def patient(self, pid: str) -> list[np.ndarray]:
        return [self.slide(s) for s in self.slides[pid]]

    def batch(
        self,
        pids: Sequence[str],
        *,
        per_slide: bool,
        max_tiles: int | None = None,
        seed: int | None = None,
        norm: FeatureNorm | None = None,
        device: str = "cpu",
        keys: Sequence[int] | None = None,
    ) -> Batch:
        """Build one ragged batch. With ``max_tiles`` and a ``seed``, each bag keeps a random
        subset of at most ``max_tiles`` tiles (training); otherwise whole bags. The subset of
        a patient's bag depends on ``seed`` and the patient's key (default: its position
        here) alone, so a batch split across processes draws the same tiles as one."""
        import torch

        parts, sizes, groups = [], [], []
        for gi, pid in enumerate(pids):
            rng = None
            if seed is not None and max_tiles is not None:
                rng = np.random.default_rng([seed, int(keys[gi]) if keys is not None else gi])
            bags = self.patient(pid)
            if not per_slide:
                bags = [bags[0] if len(bags) == 1 else np.concatenate(bags)]
            for b in bags:
                if rng is not None and max_tiles is not None and len(b) > max_tiles:
                    b = b[np.sort(rng.choice(len(b), max_tiles, replace=False))]
                parts.append(b)
                sizes.append(len(b))
                groups.append(gi)
        x = torch.from_numpy(np.concatenate(parts)).to(device, non_blocking=True).float()
        if norm is not None:
            x = norm.apply(x)
        sizes_t = torch.as_tensor(sizes, device=device)
        batch = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes_t)
        group = torch.as_tensor(groups, device=device) if per_slide else None
        return Batch(x, batch, len(sizes), group, len(pids), np.arange(len(pids)))

    def batches(
        self,
        pids: Sequence[str],
        order: Sequence[Sequence[int]],
        *,
        per_slide: bool,
        max_tiles: int | None = None,
        seeds: Sequence[int] | None = None,
        norm: FeatureNorm | None = None,
        device: str = "cpu",
        workers: int = 2,
    ) -> Iterator[Batch]:
        """Yield the batches ``order`` names (lists of positions in ``pids``), reading up to
        ``2 * workers`` batches ahead in threads so store reads overlap compute."""

        def make(j: int) -> Batch:
            idx = np.asarray(order[j])
            b = self.batch(
                [pids[i] for i in idx],
                per_slide=per_slide,
                max_tiles=max_tiles,
                seed=None if seeds is None else int(seeds[j]),
                norm=norm,
                device=device,
                keys=idx,
            )
            b.index = idx
            return b

        if workers <= 0:
            for j in range(len(order)):
                yield make(j)
            return
        ahead = 2 * workers
        with ThreadPoolExecutor(workers, thread_name_prefix="wsimm-bags") as pool:
            futs = [pool.submit(make, j) for j in range(min(ahead, len(order)))]
            for j in range(len(order)):
                nxt = j + ahead
                if nxt < len(order):
                    futs.append(pool.submit(make, nxt))
                yield futs[j].result()
                futs[j] = None  # type: ignore[call-overload]  # free the batch


class FeatureNorm:
    """Per-dimension standardisation fitted on the tiles of training patients only."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self._t: dict = {}

    @classmethod
    def fit(cls, source: BagSource, pids: Sequence[str]) -> FeatureNorm:
        s = np.zeros(source.dim)
        ss = np.zeros(source.dim)
        n = 0
        for pid in pids:
            for b in source.patient(pid):
                f = b.astype(np.float64)
                s += f.sum(0)
                ss += (f * f).sum(0)
                n += len(f)
        mean = s / max(n, 1)
        var = np.maximum(ss / max(n, 1) - mean**2, 0.0)
        return cls(mean, np.sqrt(var) + 1e-6)

    def apply(self, x):
        key = str(x.device)
        if key not in self._t:
            import torch

            self._t[key] = (
                torch.as_tensor(self.mean, device=x.device),
                torch.as_tensor(self.std, device=x.device),
            )
        m, s = self._t[key]
        return (x - m) / s
