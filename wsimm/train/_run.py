"""``wsimm train``: patient-level cross-validation of a MIL model on a feature store, writing
the run directory (config.yaml, splits.csv, fold_<k>/, metrics.json, predictions.csv)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsimm._progress import progress
from wsimm.errors import ConfigError, DataError, WsimmWarning
from wsimm.train._config import EXTRA_KWARGS, TrainConfig
from wsimm.train._data import BagSource
from wsimm.train._fold import json_clean
from wsimm.train._metrics import METRIC_KEYS, summarise_folds
from wsimm.train._splits import add_validation, check_splits, load_splits, make_splits
from wsimm.train._tables import load_examples, warn_folds_missing_classes


@dataclass
class RunResult:
    """What ``train`` produced: the run folder, ``metrics.json`` content, the predictions and
    the folds that failed (with their errors)."""

    out: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def train(
    cfg: TrainConfig | None = None, *, overwrite: bool = False, quiet: bool = False, **options
) -> RunResult:
    """Cross-validate a MIL model; see :class:`TrainConfig` for ``options``.

    Nothing is fitted on test patients: time bins, feature normalisation, class weights and the
    Cox baseline come from each fold's training patients; the epoch is chosen on the fold's
    validation patients. Every test patient gets exactly one prediction.

    Under ``torchrun --nproc-per-node N`` the folds are trained data-parallel (DDP, gloo on
    CPU, NCCL on GPU) with the same steps as one process; rank 0 writes the run directory.
    """
    t0 = time.perf_counter()
    cfg = (cfg or TrainConfig(**options)).validate()
    _check_model(cfg)
    if cfg.tune is not None:  # a bad grid, or a candidate it makes, fails before anything
        from wsimm.train._tune import TuneSpec, with_values  # is written

        with cfg.naming_source():
            spec = TuneSpec.from_config(cfg.tune)
        for values in spec.candidates():
            try:
                _check_model(with_values(cfg, values))
            except ConfigError as e:
                shown = ", ".join(f"{k}: {v!r}" for k, v in values.items())
                raise cfg.error(f"tune.grid candidate {{{shown}}}: {e}") from None
    out = Path(cfg.out)
    if (out / "metrics.json").exists() and not overwrite:
        raise ConfigError(
            f"{out}: already holds a finished run; choose another --out or pass --overwrite"
        )
    created = not out.exists()
    try:
        with _threads(cfg):
            return _train(cfg, out, quiet=quiet, t0=t0)
    except BaseException:
        # a run folder this call made holds no finished run: gone, as if never asked for
        # (a folder that was there before keeps what it had)
        if created and out.is_dir() and not (out / "metrics.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _check_model(cfg: TrainConfig) -> None:
    """The MIL model's name and ``model_kwargs`` (a typo, ``dropout: 2``), by building it
    once on made-up sizes: they fail before anything is read or written (they failed every
    fold, after the run folder was made)."""
    if cfg.fusion != "none" and not cfg.store:
        return
    from wsimm.mil import check_model, create_model

    check_model(cfg.model)  # outside naming_source: --model is usually a flag, not the file's
    with cfg.naming_source():
        create_model(cfg.model, 16, 2, **cfg.model_kwargs)


@contextlib.contextmanager
def _threads(cfg: TrainConfig) -> Iterator[None]:
    """torch's CPU threads for the run: ``cfg.threads`` when set; otherwise one for a run
    without slides (omics and clinical networks are too small to share out: on TCGA BLCA two
    threads cost 217 s of CPU for the 133 s that one thread does in 137 s, with the same
    results), and torch's default with slides. Restored afterwards."""
    import torch

    n = cfg.threads
    if n is None and not cfg.store and not str(cfg.device).startswith("cuda"):
        n = 1
    prev = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _train(cfg: TrainConfig, out: Path, *, quiet: bool, t0: float) -> RunResult:
    from wsimm.store import open_store

    def store_slides() -> list[str]:
        ids = open_store(cfg.store).slides()
        if not ids:
            raise DataError(
                f"{cfg.store}: the feature store holds no complete slide (a failed or "
                "interrupted wsimm tile?); tile slides into it with wsimm tile first"
            )
        return ids

    fd = None
    if cfg.fusion == "none":
        ex = load_examples(cfg, store_slides())
        source = BagSource(str(cfg.store), ex.slides, encoder=cfg.encoder, cache=cfg.cache)
    else:
        from wsimm.train._fusion import load_fusion_data

        ex = load_examples(cfg, store_slides() if cfg.store else None, slides_required=False)
        source = (
            BagSource(str(cfg.store), ex.slides, encoder=cfg.encoder, cache=cfg.cache)
            if cfg.store and ex.slides
            else None
        )
        fd = load_fusion_data(cfg, ex, source)
        _check_switches(cfg, fd.mods.names)
    cfg.encoder = source.encoder if source is not None else cfg.encoder
    from wsimm.train._dist import setup, teardown

    job, device, opened = setup(resolve_device(cfg.device))
    try:
        res = _cross_validate(cfg, ex, source, fd, job, device, quiet=quiet, t0=t0)
    except BaseException:
        teardown(opened, wait=False)  # torchrun stops the other ranks
        raise
    teardown(opened)
    return res


def _cross_validate(cfg, ex, source, fd, job, device, *, quiet: bool, t0: float) -> RunResult:
    """The folds, the baselines and the run directory (rank 0 alone writes it)."""
    import torch

    out = Path(cfg.out)
    quiet = quiet or not job.main
    if job.active and cfg.fusion != "none" and cfg.model_kwargs.get("bag_norm"):
        # the fusion's BagNorm sums its statistics over the processes, and a process whose
        # shard of a batch holds no slide would not join the sum: refused, not left to hang
        raise cfg.error(
            "model_kwargs bag_norm: true is not supported for fusion runs under torchrun; "
            "run them in one process, or remove it"
        )

    ids = ex.ids
    strata = ex.table["y" if cfg.task == "grade" else "event"].to_numpy()
    if cfg.splits:
        splits = load_splits(cfg.splits)
        extra = sorted(set(splits["patient_id"]) - set(ids))
        if extra:
            warnings.warn(
                f"{cfg.splits}: {len(extra)} patient(s) in the splits are not in this cohort "
                f"({', '.join(extra[:8])}); they are ignored",
                WsimmWarning,
                stacklevel=2,
            )
            splits = splits[splits["patient_id"].isin(ids)]
        splits = add_validation(
            splits,
            dict(zip(ids, strata, strict=True)),
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
    else:
        splits = make_splits(
            ids, strata, folds=cfg.folds, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
    check_splits(splits, ids, source=str(cfg.splits or "splits"))
    if cfg.task == "survival":  # before anything is written: every set of every fold has events
        ev = splits.merge(ex.table[["patient_id", "event"]], on="patient_id")
        n_ev = ev.groupby(["fold", "set"])["event"].sum()
        empty = n_ev[n_ev == 0]
        if len(empty):
            (k, part), *_ = empty.index
            raise DataError(
                f"{cfg.labels}: fold {k} has no events among its {part} patients; survival "
                "losses and metrics need some (use fewer --folds)"
            )
    if cfg.task == "grade":  # a test fold without a class has no AUC: say so before any fold
        warn_folds_missing_classes(splits, ex, str(cfg.labels))

    if job.main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        splits.to_csv(out / "splits.csv", index=False)

    fold_rows, preds, failed = [], [], {}
    clin_types: dict[int, dict[str, str]] = {}
    fold_cfgs: dict[int, TrainConfig] = {}
    tunings: list[pd.DataFrame] = []
    strata_of = dict(zip(ids, strata, strict=True))
    fold_sets = {
        # sorted: a fold's patients (and so its batches) do not follow the tables' row order
        int(k): {s: sorted(d.loc[d["set"] == s, "patient_id"]) for s in ("train", "val", "test")}
        for k, d in splits.groupby("fold", sort=True)
    }
    baselines: dict[str, Any] = {}
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with progress(quiet=quiet) as bar:
            from wsimm.train._fit import fit_fold

            def fit(c: TrainConfig, sets: dict, k: int, bar=None):
                if fd is None:
                    return fit_fold(c, source, ex.table, sets, k, device=device, bar=bar)
                from wsimm.train._fusion import fit_fusion_fold

                return fit_fusion_fold(
                    c,
                    fd,
                    ex.table,
                    sets,
                    k,
                    fusion=c.fusion,
                    modalities=fd.mods.names,
                    device=device,
                    bar=bar,
                )

            for k, sets in fold_sets.items():
                try:
                    fold_cfg, tuned = cfg, None
                    if cfg.tune is not None:  # inner CV on this fold's train + val patients
                        from wsimm.train._tune import tune_fold, with_values

                        tuned = tune_fold(
                            cfg,
                            fit,
                            sets["train"] + sets["val"],
                            strata_of,
                            int(k),
                            extra=fd.wide_alone_candidates(cfg) if fd is not None else [],
                            bar=bar,
                        )
                        fold_cfg = with_values(cfg, tuned.chosen)
                        tunings.append(tuned.table)
                    fold_cfgs[int(k)] = fold_cfg
                    res = fit(fold_cfg, sets, k, bar=bar)
                except (DataError, ConfigError):
                    raise
                except Exception as e:  # a fold that breaks is reported, the others go on
                    failed[int(k)] = f"{type(e).__name__}: {e}"
                    if job.main:
                        (out / f"fold_{k}").mkdir(exist_ok=True)
                        (out / f"fold_{k}" / "error.txt").write_text(traceback.format_exc())
                    continue
                fdir = out / f"fold_{k}"
                res.model.meta["classes"] = ex.classes
                pre = getattr(res, "preprocess", None)
                if pre is not None and (pre.clin_num or pre.clin_cat):
                    clin_types[int(k)] = {
                        **dict.fromkeys(pre.clin_num, "numeric"),
                        **dict.fromkeys(pre.clin_cat, "categorical"),
                    }
                if job.main:
                    if fd is None:
                        res.model.save(fdir)
                    else:
                        from wsimm.train._fusion import save_fusion_fold

                        save_fusion_fold(res, fdir)
                    res.history.to_csv(fdir / "history.csv", index=False)
                    if tuned is not None:
                        tuned.table.to_csv(fdir / "tuning.csv", index=False)
                fold_rows.append(
                    {
                        "fold": int(k),
                        **res.metrics,
                        "best_epoch": res.best_epoch,
                        "n_test": len(sets["test"]),
                        **({"tuned": tuned.chosen} if tuned is not None else {}),
                    }
                )
                preds.append(res.predictions)
            if fd is not None:
                from wsimm.train._fusion import run_baselines

                baselines = run_baselines(
                    cfg, fd, ex.table, fold_sets, out, device=device, bar=bar, fold_cfgs=fold_cfgs
                )
    finally:
        torch.use_deterministic_algorithms(prev_det)

    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    if not failed:
        _check_scored(predictions, splits)
    if ex.classes is not None and len(predictions):
        predictions["label_name"] = [ex.classes[i] for i in predictions["label"]]
    metrics = _summarise(cfg, fold_rows, failed)
    metrics["threads"] = torch.get_num_threads()
    if job.active:
        metrics["processes"] = job.world
    if tunings:
        metrics["tuning"] = {
            "metric": f"inner_{METRIC_KEYS[cfg.task][0]}",
            "folds": {str(r["fold"]): r["tuned"] for r in fold_rows if "tuned" in r},
        }
    if fd is not None:
        metrics["model"] = f"{cfg.fusion} fusion"
        metrics["modalities"] = fd.mods.names
        metrics["baselines"] = baselines
        spec = fd.mods.clinical_spec
        if spec is not None:
            metrics["clinical"] = clinical_summary(spec, clin_types)
    wide_only = [int(r["fold"]) for r in metrics["folds"] if r.get("deep_part_kept") == 0]
    if wide_only:
        metrics["wide_only"] = wide_only
        if not quiet:
            print(
                f"{cfg.fusion} fusion kept its linear (wide) part alone in fold(s) "
                f"{', '.join(map(str, wide_only))}: no epoch of its deep part beat it on the "
                "validation patients (metrics.json: wide_only)"
            )
    stalled = stalled_folds(cfg, metrics)
    if stalled:
        metrics["stalled"] = stalled
        if job.main:
            warnings.warn(
                "kept the first epoch, or one no better than a constant prediction on the "
                "validation patients (a stalled network, close to untrained) in "
                + "; ".join(f"{m} fold(s) {', '.join(map(str, ks))}" for m, ks in stalled.items())
                + "; its figures there are a barely trained network's (metrics.json: stalled"
                + (
                    f"; MIL folds were restarted up to {cfg.restarts} time(s) first"
                    if cfg.fusion == "none" and cfg.restarts
                    else ""
                )
                + ")",
                WsimmWarning,
                stacklevel=2,
            )
    if not job.main:  # the other ranks computed the same folds; rank 0 writes them
        return RunResult(out, metrics, predictions, failed, time.perf_counter() - t0)
    predictions.to_csv(out / "predictions.csv", index=False)
    if tunings:
        pd.concat(tunings, ignore_index=True).to_csv(out / "tuning.csv", index=False)
    if fd is not None:
        _comparison(cfg, fold_rows, baselines).to_csv(out / "comparison.csv", index=False)
    if cfg.task == "survival" and len(predictions):
        from wsimm.survival import km_plot

        groups = (predictions["risk_group"] == "high").astype(int)
        metrics["logrank_p"] = km_plot(
            predictions["time"],
            predictions["event"],
            out / "km.png",
            group=groups,
            title=f"{cfg.model}, {len(fold_rows)} test folds",
        )
    (out / "metrics.json").write_text(json.dumps(json_clean(metrics), indent=1))
    return RunResult(out, metrics, predictions, failed, time.perf_counter() - t0)


def stalled_folds(cfg: TrainConfig, metrics: dict[str, Any]) -> dict[str, list[int]]:
    """Per network (the run's model and its network baselines), the folds whose selected
    epoch is the first (the validation loss never improved after one epoch) or, where it was
    measured (MIL grading), whose kept epoch never beat a constant prediction on validation."""
    if cfg.epochs < 2:
        return {}
    out: dict[str, list[int]] = {}
    rows = {str(metrics.get("model", cfg.model)): metrics.get("folds", [])}
    rows.update({k: b.get("folds", []) for k, b in (metrics.get("baselines") or {}).items()})
    for name, folds in rows.items():
        ks = [
            int(r["fold"])
            for r in folds
            if r.get("best_epoch") == 0 or r.get("left_flat_start") is False
        ]
        if ks:
            out[name] = ks
    return out


def clinical_summary(spec, fold_types: dict[int, dict[str, str]]) -> dict[str, Any]:
    """Which clinical columns a run used, as what type (inferred on each fold's training
    patients: a column typed differently in some folds says which), and which it left out."""
    types: dict[str, str] = {}
    for c in spec.columns:
        by_type: dict[str, list[int]] = {}
        for k, t in sorted(fold_types.items()):
            by_type.setdefault(t.get(c, "unused"), []).append(k)
        if len(by_type) == 1:
            types[c] = next(iter(by_type))
        else:
            types[c] = "; ".join(
                f"{t} (fold {', '.join(map(str, ks))})" for t, ks in sorted(by_type.items())
            )
    return {"columns": types, "excluded": dict(spec.excluded)}


def _check_scored(predictions: pd.DataFrame, splits: pd.DataFrame) -> None:
    want = set(splits.loc[splits["set"] == "test", "patient_id"])
    got = predictions["patient_id"].tolist() if len(predictions) else []
    missing = sorted(want - set(got))
    if missing:
        raise DataError(f"test patient(s) without a prediction: {', '.join(missing[:8])}")
    dup = sorted({p for p in got if got.count(p) > 1}) if len(got) != len(set(got)) else []
    if dup:
        raise DataError(f"test patient(s) predicted more than once: {', '.join(dup[:8])}")


def _comparison(cfg: TrainConfig, rows: list[dict], baselines: dict[str, Any]) -> pd.DataFrame:
    """Per fold, the headline metric of the run's model and of every baseline."""
    key = METRIC_KEYS[cfg.task][0]
    table = {f"{cfg.fusion}_fusion": {r["fold"]: r.get(key) for r in rows}}
    for name, b in baselines.items():
        table[name] = {r["fold"]: r.get(key) for r in b["folds"]}
    df = pd.DataFrame(table)
    df.index.name = "fold"
    df = df.sort_index()
    df.loc["mean"] = df.mean()
    return df.reset_index()


def _summarise(cfg: TrainConfig, rows: list[dict], failed: dict[int, str]) -> dict[str, Any]:
    mean, std = summarise_folds(cfg.task, rows)
    return {
        "task": cfg.task,
        "model": cfg.model,
        "encoder": cfg.encoder,
        "folds": rows,
        "mean": mean,
        "std": std,
        "failed": {str(k): v for k, v in failed.items()},
    }


def _check_switches(cfg: TrainConfig, modalities: list[str]) -> None:
    """Fusion switches that join slides and omics are refused when the run lacks either,
    rather than silently doing nothing."""
    if "cross_prototypes" in cfg.fusion_kwargs:  # a bad form fails before anything is written
        from wsimm.train._fusion import cross_forms

        with cfg.naming_source():
            forms = cross_forms(cfg.fusion_kwargs["cross_prototypes"])
        if any(forms) and not cfg.fusion_kwargs.get("cross"):
            raise cfg.error(
                f"fusion_kwargs cross_prototypes {cfg.fusion_kwargs['cross_prototypes']} needs "
                "cross: true (prototype shares are a form of the cross terms); add it"
            )
    on = [k for k in EXTRA_KWARGS if cfg.fusion_kwargs.get(k)]
    if on and not {"slide", "omics"} <= set(modalities):
        raise cfg.error(
            f"fusion_kwargs {', '.join(on)} join slides and omics, but this run has only "
            f"{', '.join(modalities) or 'no modality'}; add --store and --omics, or remove them"
        )
