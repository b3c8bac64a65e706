"""Time bins for discrete-time survival, fitted on training patients only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsimm.errors import ConfigError


@dataclass(frozen=True)
class TimeBins:
    """Bin edges ``[0, e1, ..., e_{k-1}, inf)``: ``k`` bins cut at quantiles of the observed
    event times of the patients the bins were fitted on."""

    edges: tuple[float, ...]

    @classmethod
    def fit(cls, time: np.ndarray, event: np.ndarray, n_bins: int = 4) -> TimeBins:
        time = np.asarray(time, np.float64)
        event = np.asarray(event).astype(bool)
        if n_bins < 1:
            raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
        if not event.any():
            raise ConfigError("cannot fit time bins: the training patients have no events")
        inner = np.quantile(time[event], np.linspace(0, 1, n_bins + 1)[1:-1])
        inner = np.unique(inner)
        return cls(edges=(0.0, *(float(e) for e in inner), float("inf")))

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def assign(self, time: np.ndarray) -> np.ndarray:
        """Bin index of each time (times past the last inner edge fall in the last bin)."""
        inner = np.asarray(self.edges[1:-1])
        return np.searchsorted(inner, np.asarray(time, np.float64), side="right")

    def to_dict(self) -> dict:
        return {"edges": [e if np.isfinite(e) else "inf" for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict) -> TimeBins:
        return cls(edges=tuple(float(e) for e in d["edges"]))
