"""Training one fold: AdamW with a cosine schedule, early stopping and model selection on the
inner validation set only, then one prediction per test patient."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wsimm.errors import DataError
from wsimm.survival import TimeBins, c_index
from wsimm.train._config import TrainConfig
from wsimm.train._data import BagSource, FeatureNorm
from wsimm.train._dist import current
from wsimm.train._fold import FoldModel, breslow
from wsimm.train._metrics import grade_metrics, survival_metrics


@dataclass
class FoldResult:
    fold: int
    model: FoldModel
    metrics: dict[str, float]
    predictions: pd.DataFrame
    history: pd.DataFrame
    best_epoch: int
    train_ids: list[str] = field(default_factory=list)


class _Objective:
    """The training loss of a task, fitted on the training patients (class weights, bins)."""

    def __init__(self, cfg: TrainConfig, table: pd.DataFrame, bins: TimeBins | None, n_out: int):
        import torch

        self.task = cfg.task
        self.cox = cfg.task == "survival" and cfg.survival_loss == "cox"
        self.bins = bins
        self.weight = None
        self.constant = None  # log class shares of the best constant prediction (grading)
        if cfg.task != "grade":
            return
        counts = np.bincount(table["y"].to_numpy(), minlength=n_out).astype(np.float64)
        shares = counts
        if cfg.balance == "weights":
            # a class the training patients lack weighs 1: it has no training example to
            # weigh, and a weight of 0 made the validation loss 0/0 when the validation
            # patients were all of such classes (tiny cohorts), so no epoch was ever kept
            w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_out, 1.0)
            self.weight = torch.as_tensor(w, dtype=torch.float32)
            shares = counts * w
        elif cfg.balance == "sampler":  # batches drawn balanced over the classes present
            shares = (counts > 0).astype(np.float64)
        shares = np.clip(shares / shares.sum(), 1e-6, None)
        self.constant = torch.log(torch.as_tensor(shares, dtype=torch.float32))

    def constant_loss(self, tg: dict) -> float | None:
        """The loss on targets ``tg`` of the best constant prediction for the training
        patients (their class shares, as this objective weighs them): what a network still
        at its flat start scores. ``None`` for survival (no closed-form constant)."""
        import torch

        if self.constant is None:
            return None
        y = tg["y"]
        logits = self.constant.to(y.device).expand(len(y), -1)
        return float(self(logits, tg, torch.arange(len(y), device=y.device)))

    def targets(self, table: pd.DataFrame, device: str) -> dict:
        import torch

        if self.task == "grade":
            return {"y": torch.as_tensor(table["y"].to_numpy(), device=device)}
        t = table["time"].to_numpy(np.float64)
        out = {
            "time": torch.as_tensor(t, device=device, dtype=torch.float32),
            "event": torch.as_tensor(table["event"].to_numpy(), device=device),
        }
        if self.bins is not None:
            out["bin"] = torch.as_tensor(self.bins.assign(t), device=device)
        return out

    def __call__(self, logits, tg: dict, idx):
        import torch.nn.functional as F

        from wsimm.survival._losses import cox_loss, nll_loss

        if self.task == "grade":
            w = None if self.weight is None else self.weight.to(logits.device)
            return F.cross_entropy(logits, tg["y"][idx], weight=w)
        if self.cox:
            return cox_loss(logits[:, 0], tg["time"][idx], tg["event"][idx])
        return nll_loss(logits, tg["bin"][idx], tg["event"][idx])


class EpochSelection:
    """Model selection on the validation split, shared by every training loop: each epoch's
    history row, a non-finite training loss refused, the weights of the epoch with the lowest
    validation loss kept, and early stopping after ``patience`` epochs without improvement.

    With a ``floor`` (the validation loss of the best constant prediction, see
    :meth:`_Objective.constant_loss`) the patience is counted only once some epoch has beaten
    it: a network that has not yet left its flat start trains on rather than being stopped
    there (issue 22: on small cohorts the validation loss often rises for 10-20 epochs before
    it falls below chance). Selection is unchanged: the lowest validation loss is kept."""

    def __init__(
        self, patience: int, *, bar=None, task_id=None, label: str = "", floor: float | None = None
    ) -> None:
        self.patience, self.bar, self.task_id, self.label = patience, bar, task_id, label
        self.floor = floor
        self.best_loss, self.best_epoch, self._state = math.inf, -1, None
        self.attempt = 0  # which initialisation (fit_fold's restarts)
        self.history: list[dict] = []

    def end_epoch(
        self, model, epoch: int, train_loss: float, val_loss: float, val_scores: dict
    ) -> bool:
        """Book the epoch; ``True`` when training should stop."""
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        row.update({f"val_{k}": v for k, v in val_scores.items()})
        self.history.append(row)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{self.label}training loss became {train_loss}")
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            self._state = copy.deepcopy(model.state_dict())
        if self.bar is not None:
            self.bar.update(self.task_id, advance=1, rate=f"val loss {val_loss:.3f}")
        waiting = self.floor is not None and not self.left_flat_start
        return not waiting and epoch - self.best_epoch >= self.patience

    @property
    def left_flat_start(self) -> bool:
        """Whether the kept epoch is past the flat start: below the floor when there is one,
        otherwise any epoch after the first."""
        if self.floor is not None:
            return self.best_loss < self.floor
        return self.best_epoch > 0

    def restore(self, model) -> None:
        """Load the kept weights into ``model``."""
        if self._state is None:
            losses = ", ".join(f"{h['val_loss']:.3g}" for h in self.history[:5])
            raise FloatingPointError(
                f"{self.label}no epoch had a finite validation loss ({losses}); the validation "
                "patients may be too few or of classes the training patients lack: use fewer "
                "--folds or more patients"
            )
        model.load_state_dict(self._state)


def fit_fold(
    cfg: TrainConfig,
    source: BagSource,
    table: pd.DataFrame,
    sets: dict[str, list[str]],
    fold: int,
    *,
    device: str,
    bar=None,
) -> FoldResult:
    """Train on ``sets['train']``, select the epoch on ``sets['val']``, score ``sets['test']``.
    A run whose validation loss is lowest at its first epoch (a flat start: the network did
    not leave its initial plateau) is restarted from another initialisation up to
    ``cfg.restarts`` times; the attempt with the lowest validation loss is kept."""
    rows = table.set_index("patient_id")
    tr, va, te = (rows.loc[sets[s]].reset_index() for s in ("train", "val", "test"))

    bins = None
    if cfg.task == "survival":
        for name, part in (("training", tr), ("validation", va), ("test", te)):
            if int(part["event"].sum()) == 0:
                raise DataError(
                    f"fold {fold}: the {name} patients have no events; survival metrics and "
                    "losses need some (use fewer --folds or stratified splits)"
                )
        if cfg.survival_loss == "nll":
            bins = TimeBins.fit(tr["time"].to_numpy(), tr["event"].to_numpy(), cfg.n_bins)
        n_out = bins.n_bins if bins is not None else 1
    else:
        n_out = int(table["y"].max()) + 1

    job = current()
    norm = FeatureNorm.fit(source, tr["patient_id"].tolist()) if cfg.normalize else None
    best = None
    for attempt in range(1 + max(0, cfg.restarts)):
        got = _attempt(cfg, source, tr, va, fold, attempt, n_out, bins, norm, device, bar, job)
        if best is None or got[2].best_loss < best[2].best_loss:
            best = got
        if (got[2].best_epoch > 0 and got[2].left_flat_start) or cfg.epochs == 1:
            break  # left the flat start: no restart
    fm, _, sel = best  # type: ignore[misc]
    fm.meta["attempts"] = attempt + 1
    fm.meta["restart_kept"] = int(sel.attempt)
    train_ids = tr["patient_id"].tolist()

    def logits_of(ids: list[str]) -> np.ndarray:
        return _eval_logits(job, fm, source, ids, device=device, workers=cfg.workers)

    if cfg.task == "survival":
        # the risk-group cut and (Cox) the baseline hazard come from training patients
        tr_logits = logits_of(train_ids)
        tr_risk = fm.risk(tr_logits)
        fm.meta["train_risk_median"] = float(np.median(tr_risk))
        if bins is None:
            fm.baseline = breslow(tr_risk, tr["time"].to_numpy(), tr["event"].to_numpy())
    fm.meta["best_epoch"] = sel.best_epoch

    test_ids = te["patient_id"].tolist()
    logits = logits_of(test_ids)
    metrics = _score(fm, te, logits, tr)
    metrics["attempts"] = fm.meta["attempts"]  # > 1: restarted after a flat start
    metrics["bag_norm"] = bool(fm.meta["model_kwargs"].get("bag_norm"))
    if sel.floor is not None:  # False: no epoch beat a constant prediction on validation
        metrics["left_flat_start"] = bool(sel.left_flat_start)
    preds = _prediction_rows(fm, te, logits, fold)
    return FoldResult(
        fold, fm, metrics, preds, pd.DataFrame(sel.history), sel.best_epoch, train_ids
    )


def _eval_logits(job, fm: FoldModel, source: BagSource, ids: list[str], **kw) -> np.ndarray:
    """Eval-mode outputs of ``ids``, the patients shared out between torchrun's processes."""
    (lg,) = job.map_rows(lambda part: fm.outputs(source, part, **kw)[:1], ids)
    return lg


def _model_kwargs(cfg: TrainConfig, attempt: int) -> dict:
    """The model's keyword arguments for one attempt of a fold. BagNorm is on by default for
    grading, where it removes the flat start (issue 22), and off for survival: its losses are
    scale-sensitive and overfit a strong per-slide signal within a few epochs with it
    (tests/train/test_acceptance.py's cohort: Cox ABMIL 0.72 instead of 0.78). With the Cox
    loss the restarts after a flat start switch it on (the attempt with the lowest validation
    loss is still the one kept): on issue 22's clusters survival cohort mean pooling without it
    kept epoch 0 after two restarts in one fold (c-index 0.561 where a ridge Cox on bag means
    reaches 0.793). A ``bag_norm`` in ``model_kwargs`` holds for every attempt."""
    restart_cox = attempt > 0 and cfg.task == "survival" and cfg.survival_loss == "cox"
    return {"bag_norm": cfg.task == "grade" or restart_cox, **cfg.model_kwargs}


def _attempt(cfg, source, tr, va, fold, attempt, n_out, bins, norm, device, bar, job):
    """One training run of a fold from the initialisation of ``attempt``: ``(fold model,
    network, epoch selection)`` with the kept epoch's weights loaded."""
    import torch

    from wsimm.mil import create_model

    per_slide = cfg.multi_slide == "slides"
    seed = cfg.seed * 1000 + fold + 100003 * attempt
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    kwargs = _model_kwargs(cfg, attempt)
    model = create_model(cfg.model, source.dim, n_out, **kwargs).to(device)
    meta = {
        "task": cfg.task,
        "model": cfg.model,
        "model_kwargs": kwargs,
        "in_dim": source.dim,
        "n_outputs": n_out,
        "encoder": source.encoder,
        "multi_slide": cfg.multi_slide,
        "survival_loss": cfg.survival_loss if cfg.task == "survival" else None,
        "fold": fold,
    }
    fm = FoldModel(model=model, norm=norm, bins=bins, meta=meta)
    objective = _Objective(cfg, tr, bins, n_out)
    tg_tr, tg_va = objective.targets(tr, device), objective.targets(va, device)
    train_ids, val_ids = tr["patient_id"].tolist(), va["patient_id"].tolist()

    def logits_of(ids: list[str], **kw) -> np.ndarray:
        return _eval_logits(job, fm, source, ids, device=device, workers=cfg.workers, **kw)

    net = job.wrap(model, partial=hasattr(model, "instance"))  # DDP under torchrun
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(train_ids) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    sample_p = None
    if cfg.task == "grade" and cfg.balance == "sampler":
        counts = np.bincount(tr["y"].to_numpy())
        sample_p = 1.0 / counts[tr["y"].to_numpy()]
        sample_p /= sample_p.sum()

    name = f"fold {fold}" + (f" restart {attempt}" if attempt else "")
    task_id = bar.add_task(name, total=cfg.epochs, rate="") if bar is not None else None
    floor = objective.constant_loss(tg_va)
    sel = EpochSelection(cfg.patience, bar=bar, task_id=task_id, label=f"{name}: ", floor=floor)
    sel.attempt = attempt
    for epoch in range(cfg.epochs):
        net.train()
        if sample_p is not None:
            perm = rng.choice(len(train_ids), len(train_ids), replace=True, p=sample_p)
        else:
            perm = rng.permutation(len(train_ids))
        order = [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]
        seeds = rng.integers(0, 2**31, len(order))
        # under torchrun each process takes its shard of every batch
        local = [job.step_items(o)[0] for o in order]
        total, n_seen = 0.0, 0
        for j, b in enumerate(
            source.batches(
                train_ids,
                local,
                per_slide=per_slide,
                max_tiles=cfg.max_tiles,
                seeds=seeds,
                norm=norm,
                device=device,
                workers=cfg.workers,
            )
        ):
            y = tg_tr["y"][b.index] if "y" in tg_tr else None
            weight = None  # a rank's stand-in item stays out of BagNorm's batch statistics
            if job.stands_in(len(order[j])):
                weight = torch.zeros(b.n_bags if b.group is None else b.n_groups, device=device)
            out = net(
                b.x, b.batch, b.n_bags, group=b.group, n_groups=b.n_groups, y=y, weight=weight
            )
            whole = torch.as_tensor(order[j], device=device)
            loss, value = job.batch_loss(
                out.logits,
                len(order[j]),
                lambda lg, whole=whole: objective(lg, tg_tr, whole),
                aux=out.aux_loss,
                aux_weight=getattr(model, "aux_weight", 0.0),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += value * len(order[j])
            n_seen += len(order[j])
        val_logits = logits_of(val_ids, batch_size=cfg.batch_size)
        with torch.no_grad():
            vl = torch.as_tensor(val_logits, device=device)
            val_loss = float(objective(vl, tg_va, torch.arange(len(val_ids), device=device)))
        scores = _score(fm, va, val_logits, tr, full=False)
        if sel.end_epoch(model, epoch, total / max(n_seen, 1), val_loss, scores):
            break
    if bar is not None:
        bar.update(task_id, completed=cfg.epochs)
    sel.restore(model)
    return fm, model, sel


def _score(
    fm: FoldModel, part: pd.DataFrame, logits: np.ndarray, train: pd.DataFrame, full: bool = True
) -> dict:
    if fm.task == "grade":
        return grade_metrics(part["y"].to_numpy(), fm.probabilities(logits))
    if not full:  # validation history: concordance only (no baseline hazard yet for Cox)
        return {"c_index": c_index(part["time"], part["event"], fm.risk(logits))}
    return survival_metrics(
        part["time"].to_numpy(),
        part["event"].to_numpy(),
        fm.risk(logits),
        lambda t: fm.survival_at(logits, t),
        train["time"].to_numpy(),
        train["event"].to_numpy(),
    )


def _prediction_rows(fm: FoldModel, part: pd.DataFrame, logits: np.ndarray, fold: int):
    df = pd.DataFrame({"patient_id": part["patient_id"].to_numpy(), "fold": fold})
    if fm.task == "grade":
        prob = fm.probabilities(logits)
        df["label"] = part["y"].to_numpy()
        df["pred"] = prob.argmax(1)
        for c in range(prob.shape[1]):
            df[f"prob_{c}"] = prob[:, c]
    else:
        risk = fm.risk(logits)
        df["time"] = part["time"].to_numpy()
        df["event"] = part["event"].to_numpy()
        df["risk"] = risk
        df["risk_group"] = np.where(risk > fm.meta["train_risk_median"], "high", "low")
    return df
