"""``wsimm train --tune``: hyper-parameters chosen per outer fold by an inner cross-validation
on that fold's training and validation patients only. The outer test patients take no part:
the inner folds are cut from the other patients, each inner fold picks its epoch on its own
inner validation patients, and the candidates are ranked by their mean inner-test metric.

A ``tune:`` block in ``--config`` sets the search; ``--tune`` alone uses :data:`DEFAULT_GRID`::

    tune:
      folds: 3                      # inner folds
      wide_alone: true              # graph fusion: its wide part alone is a candidate too
      grid:                         # every combination is tried
        lr: [2.0e-4, 1.0e-3]
        weight_decay: [1.0e-4, 1.0e-2]
        fusion_kwargs.dropout: [0.25, 0.5]   # a key inside fusion_kwargs / model_kwargs
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError, DataError
from wsimm.train._config import TrainConfig
from wsimm.train._metrics import METRIC_KEYS
from wsimm.train._splits import make_splits

#: the search ``--tune`` runs without a ``tune:`` block: the optimiser settings that matter most
#: for small cohorts (4 candidates x 3 inner folds)
DEFAULT_GRID: dict[str, list[Any]] = {"lr": [2e-4, 1e-3], "weight_decay": [1e-4, 1e-2]}

#: options a grid may not vary: they define the data, the folds or the outputs
_FIXED = {
    "store",
    "labels",
    "task",
    "out",
    "label_col",
    "time_col",
    "event_col",
    "censorship_col",
    "patient_col",
    "slide_col",
    "encoder",
    "folds",
    "splits",
    "val_fraction",
    "seed",
    "device",
    "omics",
    "gene_groups",
    "clinical",
    "clinical_cols",
    "clinical_types",
    "fusion",
    "baselines",
    "tune",
}


@dataclass(frozen=True)
class TuneSpec:
    """The inner search: ``folds`` inner folds over every combination of ``grid``."""

    grid: dict[str, list[Any]]
    folds: int = 3
    #: a graph fusion with a wide part also ranks that wide part alone (``deep: false``)
    wide_alone: bool = True

    @classmethod
    def from_config(cls, tune: dict[str, Any]) -> TuneSpec:
        unknown = sorted(set(tune) - {"grid", "folds", "wide_alone"})
        if unknown:
            raise ConfigError(
                f"tune: unknown keys {', '.join(unknown)} (valid: grid, folds, wide_alone)"
            )
        grid = tune.get("grid") or DEFAULT_GRID
        if not isinstance(grid, dict):
            raise ConfigError("tune.grid must map option names to lists of values")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, values in grid.items():
            top = key.split(".", 1)[0]
            if top not in names:
                raise ConfigError(f"tune.grid: {key!r} is not a training option")
            if top in _FIXED:
                raise ConfigError(f"tune.grid: {key!r} defines the data or the folds; fix it")
            if "." in key and top not in ("fusion_kwargs", "model_kwargs"):
                raise ConfigError(
                    f"tune.grid: {key!r}: only fusion_kwargs.X and model_kwargs.X are nested"
                )
            if not isinstance(values, list) or not values:
                raise ConfigError(f"tune.grid.{key} must be a non-empty list of values")
        folds = int(tune.get("folds", 3))
        if folds < 2:
            raise ConfigError(f"tune.folds must be >= 2, got {folds}")
        wide_alone = tune.get("wide_alone", True)
        if not isinstance(wide_alone, bool):
            raise ConfigError(f"tune.wide_alone must be true or false, got {wide_alone!r}")
        return cls({k: list(v) for k, v in grid.items()}, folds, wide_alone)

    def candidates(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [
            dict(zip(keys, vals, strict=True)) for vals in itertools.product(*self.grid.values())
        ]


def with_values(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``cfg`` with a candidate's values (``fusion_kwargs.dropout`` sets one key of the dict)
    and no tuning of its own."""
    changes: dict[str, Any] = {}
    for key, v in values.items():
        if "." in key:
            top, sub = key.split(".", 1)
            d = dict(changes.get(top, getattr(cfg, top)))
            d[sub] = v
            changes[top] = d
        else:
            changes[key] = v
    return dataclasses.replace(cfg, **changes, tune=None).validate()


@dataclass
class TuneResult:
    """One outer fold's search: the chosen values and every candidate's inner scores."""

    chosen: dict[str, Any]
    table: pd.DataFrame
    metric: str


def tune_fold(
    cfg: TrainConfig,
    fit: Callable[[TrainConfig, dict[str, list[str]], int], Any],
    ids: list[str],
    strata: dict[str, Any],
    fold: int,
    *,
    extra: Sequence[dict[str, Any]] = (),
    bar=None,
) -> TuneResult:
    """Rank every candidate by its mean metric over an inner cross-validation of ``ids`` (the
    outer fold's training and validation patients) and return the best (the first on ties).
    ``extra`` candidates (a graph fusion's wide part alone, with ``wide_alone``) come first:
    a tie goes to the simpler model.

    ``fit(cfg, sets, inner_fold)`` trains one inner fold and returns its
    :class:`~wsimm.train._fit.FoldResult`; an inner fold that cannot be trained (no events in
    one of its sets, say) counts as NaN for that candidate."""
    spec = TuneSpec.from_config(cfg.tune or {})
    key = METRIC_KEYS[cfg.task][0]
    splits = make_splits(
        ids,
        np.asarray([strata[p] for p in ids]),
        folds=spec.folds,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed * 7919 + fold,
    )
    inner = {
        int(j): {s: d.loc[d["set"] == s, "patient_id"].tolist() for s in ("train", "val", "test")}
        for j, d in splits.groupby("fold", sort=True)
    }
    cands = (list(extra) if spec.wide_alone else []) + spec.candidates()
    task_id = (
        bar.add_task(f"fold {fold} tuning", total=len(cands) * len(inner), rate="")
        if bar is not None
        else None
    )
    rows = []
    for ci, cand in enumerate(cands):
        c_cfg = with_values(cfg, cand)
        scores = []
        for j, sets in inner.items():
            try:
                res = fit(c_cfg, sets, 10_000 + 100 * fold + j)
                scores.append(float(res.metrics.get(key, math.nan)))
            except DataError:
                scores.append(math.nan)
            if bar is not None:
                bar.update(task_id, advance=1)
        ok = [s for s in scores if math.isfinite(s)]
        rows.append(
            {
                "fold": fold,
                "candidate": ci,
                **cand,
                f"inner_{key}": float(np.mean(ok)) if ok else math.nan,
                **{f"inner_fold_{j}": s for j, s in zip(inner, scores, strict=True)},
            }
        )
    table = pd.DataFrame(rows)
    score = table[f"inner_{key}"].fillna(-math.inf).to_numpy()
    best = int(np.argmax(score))  # the first of equal scores
    table["chosen"] = np.arange(len(table)) == best
    return TuneResult(cands[best], table, key)
