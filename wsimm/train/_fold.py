"""One fold's model bundle (MIL network + normalisation + time bins + meta), its prediction
function, and saving/loading it as ``fold_<k>/model.safetensors`` + ``fold_<k>/meta.json``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from wsimm.errors import ConfigError
from wsimm.survival import TimeBins
from wsimm.train._data import BagSource, FeatureNorm


@dataclass
class FoldModel:
    """A trained fold: ``model`` (a :class:`wsimm.mil.MILModel`), its input normalisation,
    time bins (discrete-time survival) and meta (task, classes, model name and options)."""

    model: Any
    norm: FeatureNorm | None
    bins: TimeBins | None
    meta: dict[str, Any] = field(default_factory=dict)
    baseline: tuple[np.ndarray, np.ndarray] | None = None  # Cox: Breslow (times, cum. hazard)

    @property
    def task(self) -> str:
        return self.meta["task"]

    def outputs(
        self,
        source: BagSource,
        pids: list[str],
        *,
        device: str = "cpu",
        batch_size: int = 8,
        workers: int = 2,
        attention: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Raw outputs ``(n, K)`` for the patients (whole bags, eval mode), and per patient
        the tile attention (tiles of the patient's slides in order) when asked."""
        import torch

        self.model.eval()
        per_slide = self.meta.get("multi_slide") == "slides"
        order = [
            list(range(i, min(i + batch_size, len(pids)))) for i in range(0, len(pids), batch_size)
        ]
        out = np.zeros((len(pids), self.model.n_outputs), np.float32)
        attn: list[np.ndarray] | None = [None] * len(pids) if attention else None  # type: ignore[list-item]
        with torch.inference_mode():
            for b in source.batches(
                pids, order, per_slide=per_slide, norm=self.norm, device=device, workers=workers
            ):
                o = self.model(b.x, b.batch, b.n_bags, group=b.group, n_groups=b.n_groups)
                out[b.index] = o.logits.float().cpu().numpy()
                if attn is not None:
                    a = o.attention.float().cpu().numpy()
                    owner = (b.group[b.batch] if b.group is not None else b.batch).cpu().numpy()
                    for j, i in enumerate(b.index):
                        attn[i] = a[owner == j]
        return out, attn

    # -- read-outs ------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def risk(self, logits: np.ndarray) -> np.ndarray:
        if self.bins is None:  # Cox: the output is the log relative hazard
            return logits[:, 0].astype(np.float64)
        return -self.bin_survival(logits).sum(1)

    def bin_survival(self, logits: np.ndarray) -> np.ndarray:
        """Discrete-time: event-free probability at the end of each bin, ``(n, K)``."""
        from scipy.special import expit  # 1 / (1 + e^x) without overflow

        return np.cumprod(expit(-logits.astype(np.float64)), 1)

    def survival_at(self, logits: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Event-free probability at ``times`` for each patient, ``(n, len(times))``."""
        times = np.asarray(times, np.float64)
        if self.bins is None:
            if self.baseline is None:
                raise ConfigError("this Cox fold has no baseline hazard to give survival curves")
            bt, bh = self.baseline
            i = np.searchsorted(bt, times, side="right") - 1
            h0 = np.where(i >= 0, bh[np.clip(i, 0, None)], 0.0)
            # exp(-exp(r) h0) in log space: a large risk must not overflow exp(r)
            with np.errstate(divide="ignore"):
                log_h0 = np.log(h0)
            log_h = np.minimum(self.risk(logits)[:, None] + log_h0[None, :], 700.0)
            return np.exp(-np.exp(log_h))
        s = self.bin_survival(logits)
        xs = np.asarray(self.bins.edges[1:-1], np.float64)
        pts = np.concatenate([[0.0], xs])
        out = np.empty((len(s), len(times)))
        for r in range(len(s)):
            out[r] = np.interp(times, pts, np.concatenate([[1.0], s[r, : len(xs)]]))
        return out

    # -- files ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
        }
        import torch

        if self.norm is not None:
            tensors["norm.mean"] = torch.from_numpy(self.norm.mean)
            tensors["norm.std"] = torch.from_numpy(self.norm.std)
        if self.baseline is not None:
            tensors["baseline.time"] = torch.from_numpy(self.baseline[0].astype(np.float64))
            tensors["baseline.hazard"] = torch.from_numpy(self.baseline[1].astype(np.float64))
        save_file(tensors, str(d / "model.safetensors"))
        meta = {**self.meta, "bins": self.bins.to_dict() if self.bins else None}
        (d / "meta.json").write_text(json.dumps(json_clean(meta), indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str = "cpu") -> FoldModel:
        from safetensors.torch import load_file

        from wsimm.mil import create_model

        d = Path(directory)
        if not (d / "meta.json").is_file() or not (d / "model.safetensors").is_file():
            raise ConfigError(f"{d}: not a trained fold (needs meta.json and model.safetensors)")
        meta = json.loads((d / "meta.json").read_text())
        t = load_file(str(d / "model.safetensors"))
        kwargs = dict(meta["model_kwargs"])
        if "model.bag_norm.running_mean" not in t:  # saved before BagNorm existed
            kwargs.setdefault("bag_norm", False)
        model = create_model(meta["model"], meta["in_dim"], meta["n_outputs"], **kwargs)
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        model.to(device).eval()
        norm = (
            FeatureNorm(t["norm.mean"].numpy(), t["norm.std"].numpy()) if "norm.mean" in t else None
        )
        baseline = (
            (t["baseline.time"].numpy(), t["baseline.hazard"].numpy())
            if "baseline.time" in t
            else None
        )
        bins = TimeBins.from_dict(meta["bins"]) if meta.get("bins") else None
        return cls(model=model, norm=norm, bins=bins, meta=meta, baseline=baseline)


def breslow(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard at the distinct event times."""
    risk = np.asarray(risk, np.float64)
    time = np.asarray(time, np.float64)
    event = np.asarray(event).astype(bool)
    ut = np.unique(time[event])
    # log of each increment, d_u / sum over the risk set of exp(risk): a risk set's sum taken
    # in log space, so risks hundreds apart (a barely trained network's) do not underflow
    log_inc = np.array(
        [np.log(event[time == u].sum()) - logsumexp(risk[time >= u]) for u in ut], np.float64
    )
    with np.errstate(over="ignore"):  # an infinite hazard is the honest value there
        return ut, np.cumsum(np.exp(log_inc))


def json_clean(v):
    """Plain JSON values: numpy scalars and arrays to Python, NaN/inf to null."""
    if isinstance(v, dict):
        return {k: json_clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [json_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
