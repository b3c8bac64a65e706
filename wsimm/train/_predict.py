"""``wsimm predict``: apply every fold model of a run to the slides of a (new) store."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError, DataError
from wsimm.train._config import TrainConfig
from wsimm.train._data import BagSource
from wsimm.train._fold import FoldModel


@dataclass
class Run:
    """A finished run directory: its resolved config and one model per fold."""

    path: Path
    config: TrainConfig
    folds: list[FoldModel]

    @property
    def classes(self) -> list | None:
        return self.folds[0].meta.get("classes")


def load_run(run_dir: str | os.PathLike[str], device: str = "cpu", *, fusion: bool = False) -> Run:
    """A finished run directory. Fusion runs load only with ``fusion=True`` (their folds are
    fusion networks that need the omics and clinical tables: heatmaps use them)."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise ConfigError(
            f"{d}: not a wsimm run directory (no config.yaml); pass the --out of wsimm train"
        )
    cfg = TrainConfig.load(d / "config.yaml")
    if cfg.fusion != "none" and fusion:
        from wsimm.train._fusion import load_fusion_fold

        dirs = sorted(d.glob("fold_*/model.safetensors"), key=lambda p: int(p.parent.name[5:]))
        if not dirs:
            raise ConfigError(f"{d}: the run has no trained folds")
        return Run(d, cfg, [load_fusion_fold(p.parent, device) for p in dirs])
    if cfg.fusion != "none":
        raise ConfigError(
            f"{d}: a --fusion {cfg.fusion} run; wsimm predict takes slide-only runs: train one "
            "on the same store without --fusion"
        )
    fold_dirs = sorted(d.glob("fold_*/model.safetensors"), key=lambda p: int(p.parent.name[5:]))
    if not fold_dirs:
        raise ConfigError(f"{d}: the run has no trained folds")
    return Run(d, cfg, [FoldModel.load(p.parent, device) for p in fold_dirs])


def predict(
    run: str | os.PathLike[str] | Run,
    store: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    workers: int = 2,
    in_sample_metrics: bool = False,
) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """Predict every patient of ``labels`` (or every slide of the store, one slide per
    patient, without labels) with each fold's model, averaged: class probabilities for
    grading, risk (and per-fold risks) for survival. Returns the table (also written to
    ``out``) and, when the labels carry outcomes, the metrics of the ensemble.

    Patients of the run's own cohort (its ``splits.csv``) were trained on by most fold models:
    the table marks them ``in_sample`` and the metrics leave them out. With
    ``in_sample_metrics``, their metrics are added under ``in_sample_<metric>`` (optimistic by
    construction; never report them as a test result)."""
    from wsimm.store import open_store
    from wsimm.train._metrics import grade_metrics
    from wsimm.train._run import resolve_device
    from wsimm.train._tables import load_examples

    dev = resolve_device(device)
    r = run if isinstance(run, Run) else load_run(run, dev)
    cfg = r.config
    fs = open_store(store)
    if labels is not None:
        ex = load_examples(
            dataclasses.replace(cfg, labels=str(labels)), fs.slides(), require_outcomes=False
        )
        table, slides = ex.table, ex.slides
    else:
        slides = {s: [s] for s in fs.slides()}
        if not slides:
            raise DataError(f"{fs.path}: the store has no complete slides to predict")
        table = pd.DataFrame({"patient_id": list(slides)})
    source = BagSource(str(store), slides, encoder=r.folds[0].meta["encoder"], cache=False)
    if source.dim != r.folds[0].meta["in_dim"]:
        raise DataError(
            f"{fs.path}: features are {source.dim}-d but the run was trained on "
            f"{r.folds[0].meta['in_dim']}-d {r.folds[0].meta['encoder']!r} features"
        )
    ids = table["patient_id"].tolist()
    res = pd.DataFrame({"patient_id": ids, "slides": [";".join(slides[p]) for p in ids]})
    seen = run_patients(r.path)
    res["in_sample"] = res["patient_id"].astype(str).isin(seen)
    outs = [fm.outputs(source, ids, device=dev, workers=workers)[0] for fm in r.folds]
    metrics = None
    if cfg.task == "grade":
        prob = np.mean([fm.probabilities(o) for fm, o in zip(r.folds, outs, strict=True)], 0)
        classes = r.classes or list(range(prob.shape[1]))
        res["pred"] = prob.argmax(1)
        res["pred_name"] = [classes[i] for i in res["pred"]]
        for c in range(prob.shape[1]):
            res[f"prob_{c}"] = prob[:, c]
        if "y" in table:
            names = [ex.classes[i] for i in table["y"]]
            unknown = sorted({str(n) for n in names if n not in classes})
            if unknown:
                raise DataError(f"{labels}: labels {unknown} were not seen in training {classes}")
            res["label"] = [classes.index(n) for n in names]
            metrics = _split_metrics(
                res,
                lambda sel: grade_metrics(res["label"].to_numpy()[sel], prob[sel]),
                in_sample_metrics,
            )
    else:
        risks = np.stack([fm.risk(o) for fm, o in zip(r.folds, outs, strict=True)], 1)
        res["risk"] = risks.mean(1)
        for k, fm in enumerate(r.folds):
            res[f"risk_fold_{fm.meta['fold']}"] = risks[:, k]
        if "time" in table:
            from wsimm.survival import c_index

            res["time"], res["event"] = table["time"].to_numpy(), table["event"].to_numpy()
            metrics = _split_metrics(
                res,
                lambda sel: {
                    "c_index": c_index(res["time"][sel], res["event"][sel], res["risk"][sel])
                },
                in_sample_metrics,
            )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        res.to_csv(out, index=False)
    return res, metrics


def run_patients(run_dir: str | os.PathLike[str]) -> set[str]:
    """The patients a run trained, validated or tested on (its ``splits.csv``)."""
    p = Path(run_dir) / "splits.csv"
    if not p.is_file():
        return set()
    return set(pd.read_csv(p, usecols=["patient_id"], dtype=str)["patient_id"])


def _split_metrics(res: pd.DataFrame, score, in_sample: bool) -> dict[str, float] | None:
    """Metrics of the patients the run never saw (``n_patients`` of them) and, when asked,
    of those it trained on, under ``in_sample_*``; ``None`` when there is nothing to report."""
    inside = res["in_sample"].to_numpy()
    out: dict[str, float] = {}
    if (~inside).sum() >= 2:
        out.update(score(~inside))
        out["n_patients"] = int((~inside).sum())
    if in_sample and inside.sum() >= 2:
        out.update({f"in_sample_{k}": v for k, v in score(inside).items()})
        out["n_in_sample"] = int(inside.sum())
    return out or None
