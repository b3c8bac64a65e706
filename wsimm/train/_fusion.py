"""Training fusion networks (:mod:`wsimm.fusion`) fold by fold, and the baselines reported next
to them on the same folds: linear clinical and clinical+omics(PCA) models, single-modality
networks, and the late / concatenation / Kronecker fusions.

Everything a fold fits (omics and clinical normalisation, category vocabularies, PCA, tile
normalisation, time bins, the Cox baseline hazard) sees only that fold's training patients;
the graph fusion's linear (wide) part is refitted on training + validation patients once the
epoch is chosen, as the linear baselines are. No test patient is seen by any of it.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError, DataError, WsimmWarning
from wsimm.fusion._inputs import (
    Modalities,
    Preprocessor,
    check_gene_groups,
    read_clinical,
    read_gene_groups,
    read_omics,
)
from wsimm.fusion._model import MODALITY_NODE
from wsimm.survival import TimeBins
from wsimm.train._config import EXTRA_KWARGS, EXTRA_SETTINGS, TEST_TIME_KWARGS, TrainConfig
from wsimm.train._data import BagSource, FeatureNorm
from wsimm.train._dist import current
from wsimm.train._fit import EpochSelection, FoldResult, _Objective, _prediction_rows, _score
from wsimm.train._fold import FoldModel, breslow, json_clean
from wsimm.train._metrics import grade_metrics, summarise_folds
from wsimm.train._tables import Examples, _listing
from wsimm.train._uncertainty import (
    UncertaintySpec,
    contribution_scale,
    interval_columns,
    mc_predict,
    omics_reliability,
    slide_reliability,
)


@dataclass
class FusionData:
    """The modalities of a fusion run and, when slides are used, where their tiles are."""

    mods: Modalities
    source: BagSource | None
    slide_ids: list[str]
    #: per patient, the mean of its slides' mean tiles (read once per run; features, not fits)
    tile_means: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)
    #: tile prototypes, shares and the tile normalisation per (fitting patients, count, seed,
    #: normalised): a fold's wide part and its ``cross`` baseline share one fit
    prototypes: dict[tuple, tuple[pd.DataFrame, np.ndarray, FeatureNorm | None]] = field(
        default_factory=dict, repr=False
    )
    #: a fold's ``cross`` choice (form, penalty, every form's score) per (training and
    #: validation patients, settings): the ``cross`` baseline makes it without refitting
    cross_choices: dict[tuple, tuple[int | str, float, dict[int | str, float]]] = field(
        default_factory=dict, repr=False
    )

    def wide_alone_candidates(self, cfg: TrainConfig) -> list[dict]:
        """``--tune``'s extra candidate for a graph fusion with a wide part: that wide part
        alone (``fusion_kwargs.deep: false``), so the inner cross-validation, not one
        validation set, says whether the deep part earns its place in this outer fold."""
        kw = cfg.fusion_kwargs
        has_wide = kw.get("wide", True) and {"omics", "clinical"} & set(self.mods.names)
        if cfg.fusion != "graph" or not has_wide or not kw.get("deep", True):
            return []
        return [{"fusion_kwargs.deep": False}]

    @property
    def slide_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.slide_ids)}


def load_fusion_data(cfg: TrainConfig, ex: Examples, source: BagSource | None) -> FusionData:
    """Read ``--omics``, ``--gene-groups`` and ``--clinical`` for the cohort in ``ex``."""
    ids = set(ex.ids)
    mods = Modalities(slides={p: s for p, s in ex.slides.items() if p in ids})
    if cfg.omics:
        mods.omics = read_omics(cfg.omics, patient_col=cfg.patient_col)
        mods.omics.assays = {a: df[df.index.isin(ids)] for a, df in mods.omics.assays.items()}
        if not any(len(df) for df in mods.omics.assays.values()):
            raise DataError(
                f"{cfg.omics}: no patient of {cfg.labels} is in the omics table; check "
                f"--patient-col ({cfg.patient_col})"
            )
        if cfg.gene_groups:
            mods.gene_groups = read_gene_groups(cfg.gene_groups)
            check_gene_groups(mods.gene_groups, mods.omics, cfg.gene_groups)
    if cfg.clinical:
        exclude = [
            cfg.patient_col,
            cfg.slide_col,
            cfg.label_col,
            cfg.time_col,
            cfg.event_col,
            *([cfg.censorship_col] if cfg.censorship_col else []),
        ]
        clin, spec = read_clinical(
            cfg.clinical,
            patient_col=cfg.patient_col,
            columns=cfg.clinical_cols,
            exclude=exclude,
            types=cfg.clinical_types,
        )
        outcome_like = sorted(set(spec.columns) & set(exclude))
        if outcome_like:
            raise DataError(
                f"{cfg.clinical}: clinical column(s) {', '.join(outcome_like)} are ids or "
                "outcomes; a model must not read them"
            )
        mods.clinical = clin[clin.index.isin(ids)]
        mods.clinical_spec = spec
    have = set(mods.slides)
    if mods.omics is not None:
        have |= set(mods.omics.patients)
    if mods.clinical is not None:
        have |= set(mods.clinical.index)
    bare = sorted(ids - have)
    if bare:
        warnings.warn(
            f"{cfg.labels}: {len(bare)} patient(s) have no slide, omics or clinical data "
            f"({_listing(bare)}); they are scored from the training prior alone",
            WsimmWarning,
            stacklevel=2,
        )
    slide_ids = [s for p in ex.ids for s in mods.slides.get(p, [])]
    return FusionData(mods, source, slide_ids)


# -- one network, one fold ------------------------------------------------------------------------


class _Net:
    """A fusion network with what it needs to run on graphs: the fold's preprocessing, tile
    normalisation and the slides' tiles."""

    def __init__(
        self, net, pre: Preprocessor, fd: FusionData, norm: FeatureNorm | None, device: str
    ):
        self.net, self.pre, self.fd, self.norm, self.device = net, pre, fd, norm, device
        # uncertainty weighting: the wide part's bootstrap refits, and the fit to restore
        self.wides: list = []
        self.wide = None
        # and per modality each patient's measurement reliability, by ``pidx``
        self.reliability: dict[str, np.ndarray] = {}

    def tiles(self, batch, *, max_tiles: int | None = None, seed: int | None = None):
        """The tiles of the batch's slide nodes; with ``max_tiles`` and ``seed`` (training)
        each slide keeps a random subset drawn from the seed and the slide alone."""
        import torch

        if "slide" not in self.net.mods or batch["slide"].num_nodes == 0:
            return None
        parts, sizes = [], []
        for i in batch["slide"].sidx.tolist():
            b = self.fd.source.slide(self.fd.slide_ids[i])  # type: ignore[union-attr]
            if seed is not None and max_tiles is not None and len(b) > max_tiles:
                rng = np.random.default_rng([seed, i])
                b = b[np.sort(rng.choice(len(b), max_tiles, replace=False))]
            parts.append(b)
            sizes.append(len(b))
        x = torch.from_numpy(np.concatenate(parts)).to(self.device).float()
        if self.norm is not None:
            x = self.norm.apply(x)
        sb = torch.repeat_interleave(
            torch.arange(len(sizes), device=self.device), torch.as_tensor(sizes, device=self.device)
        )
        return x, sb

    def run(
        self,
        graphs: list,
        *,
        remove: tuple[str, ...] = (),
        batch_size: int = 64,
        explain: bool = True,
        mc: bool = False,
    ):
        """Logits ``(n, K)`` and, with ``explain``, each patient's explanation (readout
        weights, linear terms, co-attention; ``None`` per patient without) for ``graphs``
        (eval mode); the modalities in ``remove`` are taken away (their nodes do not take
        part); with ``mc``, Monte Carlo dropout stays on. Under torchrun the graphs are
        shared out between the processes and every process gets all rows."""
        return current().map_rows(
            lambda gs: self._run(gs, remove=remove, batch_size=batch_size, explain=explain, mc=mc),
            graphs,
        )

    def _run(
        self, graphs: list, *, remove: tuple[str, ...], batch_size: int, explain: bool, mc: bool
    ):
        import torch
        from torch_geometric.data import Batch

        from wsimm.fusion import mc_dropout

        self.net.eval()
        mc_dropout(self.net, mc)
        logits, weights = [], []
        try:
            with torch.inference_mode():
                for i in range(0, len(graphs), batch_size):
                    b = Batch.from_data_list(graphs[i : i + batch_size]).to(self.device)
                    keep = {
                        MODALITY_NODE[m]: torch.zeros(
                            b[MODALITY_NODE[m]].num_nodes, dtype=torch.bool, device=self.device
                        )
                        for m in remove
                        if m in self.net.mods
                    }
                    tiles = self.tiles(b) if "slide" not in remove else None
                    out = self.net(b, tiles, keep=keep)
                    logits.append(out.logits.float().cpu().numpy())
                    if not explain:  # validation epochs, training risks, removed modalities
                        weights.append([None] * int(b.num_graphs))
                        continue
                    ws = _weights_per_patient(b, out.weights, self, keep)
                    if out.coattn is not None and tiles is not None:
                        per = _coattention_per_patient(b, out.coattn, tiles[1], self)
                        for j, co in enumerate(per):
                            if co:
                                ws[j] = ws[j] or {"modality": {}, "nodes": {}}
                                ws[j]["coattention"] = co
                    if out.wide is not None:  # each modality's term of the linear part
                        terms = out.wide
                        for j in range(len(ws)):
                            ws[j] = ws[j] or {"modality": {}, "nodes": {}}
                            ws[j]["linear"] = {
                                m: terms[m][j].float().cpu().tolist() for m in terms if m != "bias"
                            }
                    weights.append(ws)
        finally:
            if mc:  # a later plain eval() must not keep sampling
                mc_dropout(self.net, False)
        n_out = self.net.spec.n_outputs
        lg = np.concatenate(logits) if logits else np.zeros((0, n_out), np.float32)
        return lg, [w for ws in weights for w in ws]


def _weights_per_patient(b, weights, net: _Net, keep) -> list[dict | None]:
    """For graph fusion: per patient, the readout weight of each modality and of each node."""
    n = int(b.num_graphs)
    if not weights:
        return [None] * n
    out: list[dict] = [{"modality": {}, "nodes": {}} for _ in range(n)]
    kinds = net.pre.kinds
    cols = net.pre.clinical_columns
    for m in net.net.mods:
        t = MODALITY_NODE[m]
        if t not in weights:
            continue
        w = weights[t].cpu().numpy()
        owner = b[t].batch.cpu().numpy()
        if t == "gene_group":
            names = [f"{kinds[k][0]}|{kinds[k][1]}" for k in b[t].kind.cpu().numpy()]
        elif t == "clinical":
            names = [cols[v] for v in b[t].var.cpu().numpy()]
        else:
            names = [net.fd.slide_ids[i] for i in b[t].sidx.cpu().numpy()]
        for j in range(n):
            sel = owner == j
            if sel.any():
                out[j]["modality"][m] = float(w[sel].sum())
                out[j]["nodes"][m] = dict(
                    zip(np.asarray(names, object)[sel], w[sel].tolist(), strict=True)
                )
    return out


def _coattention_per_patient(b, co, slide_of_tile, net: _Net, top: int = 5) -> list[dict]:
    """Per patient, per gene group (``group|assay``): the mean co-attention over the patient's
    tiles and its ``top`` tiles as ``[slide_id, tile index in the slide, attention]``."""
    n = int(b.num_graphs)
    kinds = net.pre.kinds
    attn = co.attn.float().cpu().numpy()
    groups, tmask = co.groups.cpu().numpy(), co.tiles.cpu().numpy()
    sb = slide_of_tile.cpu().numpy()
    sidx = b["slide"].sidx.cpu().numpy()
    # each tile's slide and index inside it (tiles are grouped by slide node, in node order)
    starts = np.r_[0, np.cumsum(np.bincount(sb, minlength=len(sidx)))[:-1]]
    in_slide = np.arange(len(sb)) - starts[sb]
    owner_t = b["slide"].batch.cpu().numpy()[sb]
    g_owner = b["gene_group"].batch.cpu().numpy()
    g_kind = b["gene_group"].kind.cpu().numpy()
    out: list[dict] = [{} for _ in range(n)]
    for j in range(n):
        tiles_j = np.flatnonzero(owner_t == j)
        kinds_j = g_kind[g_owner == j]
        for r, k in enumerate(kinds_j):
            if not groups[j, r] or not len(tiles_j):
                continue
            on = tmask[j, : len(tiles_j)]
            a = attn[j, r, : len(tiles_j)]
            ranked = np.argsort(-a, kind="stable")
            order = ranked[on[ranked]][:top]
            out[j][f"{kinds[k][0]}|{kinds[k][1]}"] = {
                "mean": round(float(a[on].mean()) if on.any() else 0.0, 5),
                "top_tiles": [_top_tile(net, sidx, sb, in_slide, tiles_j[i], a[i]) for i in order],
            }
    return out


def _top_tile(net: _Net, sidx, slide_of_tile, in_slide, tile: int, a: float) -> list:
    """``[slide id, tile index inside the slide, attention]`` of one tile of a batch."""
    return [net.fd.slide_ids[sidx[slide_of_tile[tile]]], int(in_slide[tile]), round(float(a), 5)]


def _keep_masks(b, mods: list[str], p: float, draw):
    """Modality dropout: per patient, drop each of its modalities with probability ``p`` but
    never all of them. ``draw`` holds a uniform number per patient of the batch and modality
    (drawn for the whole batch, so a batch split across processes drops the same nodes)."""
    import torch

    if p <= 0 or len(mods) < 2:
        return {}
    B = int(b.num_graphs)
    types = [MODALITY_NODE[m] for m in mods]
    dev = b["patient"].batch.device if hasattr(b["patient"], "batch") else "cpu"
    has = torch.stack(
        [torch.zeros(B, device=dev).index_fill_(0, b[t].batch, 1.0).bool() for t in types], 1
    )
    drop = (draw[:B, : len(types)] < p).to(dev) & has
    drop[(has & ~drop).sum(1) == 0] = False
    return {t: ~drop[b[t].batch, j] for j, t in enumerate(types)}


def fit_fusion_fold(
    cfg: TrainConfig,
    fd: FusionData,
    table: pd.DataFrame,
    sets: dict[str, list[str]],
    fold: int,
    *,
    fusion: str,
    modalities: list[str],
    device: str,
    bar=None,
    label: str | None = None,
) -> FoldResult:
    """Train one fusion network on ``sets['train']``, pick the epoch on ``sets['val']``, score
    ``sets['test']`` (also with each modality removed, when there are several)."""
    import torch

    from wsimm.fusion import FusionEnsemble, FusionNet, FusionSpec, build_graphs

    rows = table.set_index("patient_id")
    tr, va, te = (rows.loc[sets[s]].reset_index() for s in ("train", "val", "test"))
    train_ids, val_ids, test_ids = (p["patient_id"].tolist() for p in (tr, va, te))
    all_ids = train_ids + val_ids + test_ids
    bins, n_out = _bins(cfg, tr)

    seed = cfg.seed * 1000 + fold

    mods = fd.mods
    kw = dict(cfg.fusion_kwargs)
    group_pcs = kw.pop("group_pcs", 8)
    n_models = int(kw.pop("ensemble", 1))
    unc = UncertaintySpec.pop_from(kw)
    wide_mods = [m for m in modalities if m in ("omics", "clinical")]
    wide = bool(kw.pop("wide", fusion == "graph")) and bool(wide_mods)
    deep = bool(kw.pop("deep", True))
    if not deep and not wide:
        raise ConfigError(
            "fusion_kwargs deep: false keeps the graph fusion's wide (linear) part alone, and "
            f"this {fusion} fusion has none (it needs omics or clinical data and wide: true)"
        )
    pre = Preprocessor.fit(mods, train_ids, group_pcs=group_pcs)
    graphs = build_graphs(mods, pre, all_ids, slide_index=fd.slide_index, use=tuple(modalities))
    g_tr, g_va, g_te = (
        graphs[: len(tr)],
        graphs[len(tr) : len(tr) + len(va)],
        graphs[len(tr) + len(va) :],
    )
    norm = _fold_norm(cfg, fd, train_ids) if "slide" in modalities else None
    forms = cross_forms(kw.pop("cross_prototypes", 0))
    plan = _WidePlan(wide_mods)
    if wide and kw.get("cross"):  # slide terms (mean tile or prototype shares), no test patient
        plan = _cross_plan(
            cfg, fd, pre, tr, va, all_ids, forms, seed, mods=wide_mods, norm=norm, n_out=n_out,
            n_slide=int(kw.get("cross_slide_pcs", 8)), n_cross=int(kw.get("cross_omics_pcs", 4)),
        )  # fmt: skip
        if plan.slides is None:  # this fold chose no slide terms: the plain wide part
            kw["cross"] = False
    spec = FusionSpec(
        fusion=fusion,
        modalities=modalities,
        n_outputs=n_out,
        kind_genes=[p.shape[1] for p in pre.proj] if pre.proj else [len(g) for *_, g in pre.kinds],
        assays=[a for _, a, _ in pre.kinds],
        n_clinical=len(pre.clinical_columns),
        n_slots=pre.clinical_slots()[1],
        slide_dim=fd.source.dim if fd.source is not None else 0,
        slide_model=cfg.model,
        slide_model_kwargs=cfg.model_kwargs,
        wide=wide,
        wide_genes={a: len(g) for a, g in pre.genes.items()} if "omics" in modalities else None,
        cross_prototypes=plan.n_prototypes,  # 0 without slide terms
        **kw,
    )
    wide_w = _fit_wide(cfg, mods, pre, tr, plan, n_out, fold) if wide else None
    index = [[pre.genes[a].index(x) for x in genes] for _, a, genes in pre.kinds]
    all_tab = pd.concat([tr, va, te], ignore_index=True)
    objective = _Objective(cfg, tr, bins, n_out)
    tg = objective.targets(all_tab, device)
    fm = FoldModel(model=None, norm=norm, bins=bins, meta={"task": cfg.task})
    p_drop = float(spec.modality_dropout)
    name = label or fusion
    task_id = (
        bar.add_task(f"fold {fold} {name}", total=cfg.epochs * n_models, rate="")
        if bar is not None
        else None
    )
    members, history, best_epochs = [], [], []
    for member in range(n_models):
        torch.manual_seed(seed + 7919 * member)
        net = FusionNet(spec)
        net.set_gene_index(index, pre.proj)
        if wide_w is not None:
            net.set_wide(wide_w)
        net.to(device)
        hist, member_best = _fit_member(
            cfg,
            net,
            _Net(net, pre, fd, norm, device),
            fm,
            objective,
            tg,
            (g_tr, g_va),
            (tr, va),
            p_drop=p_drop,
            rng=np.random.default_rng(seed + 7919 * member),
            gen=torch.Generator().manual_seed(seed + 7919 * member),
            bar=(bar, task_id),
            wide_alone=wide_w is not None,  # not when its fit failed: that is no model
            epochs=cfg.epochs if deep else 0,  # deep: false: the wide part alone, untrained
        )
        history += [{"member": member, **r} for r in hist]
        best_epochs.append(member_best)
        members.append(net)
    if bar is not None:
        bar.update(task_id, completed=cfg.epochs * n_models)
    if wide_w is not None:  # the epoch is chosen: refit the linear part on train + validation
        trva = pd.concat([tr, va], ignore_index=True)
        wide_w = _refit_wide(cfg, mods, pre, trva, plan, n_out, fold) or wide_w
        for m in members:
            m.set_wide(wide_w)
    net = members[0] if n_models == 1 else FusionEnsemble(members)
    runner = _Net(net, pre, fd, norm, device)
    fm.model = net
    bs = cfg.graph_batch_size
    best_epoch = best_epochs[0] if n_models == 1 else float(np.mean(best_epochs))
    kept_deep = sum(e >= 0 for e in best_epochs)  # members past their wide part alone

    fm.meta = {
        "task": cfg.task,
        "fusion": fusion,
        "modalities": modalities,
        "spec": asdict(spec),
        "encoder": fd.source.encoder if fd.source is not None else None,
        "survival_loss": cfg.survival_loss if cfg.task == "survival" else None,
        "fold": fold,
        "best_epoch": best_epoch,
        "ensemble": n_models,
    }
    if plan.form_scores is not None:  # the fold's slide terms (cross), chosen without test
        if plan.slides is not None:
            fm.meta["wide_penalizer"] = plan.penalizer
        fm.meta["cross_prototypes"] = plan.form
        fm.meta["cross_validation"] = {str(k): v for k, v in plan.form_scores.items()}
    if unc is not None:  # each modality's contribution scale, from training patients
        if wide_w is not None:  # the linear part's own uncertainty: bootstrap refits
            runner.wides = _bootstrap_wide(
                cfg, mods, pre, pd.concat([tr, va], ignore_index=True), plan, n_out,
                fold, n=unc.passes, seed=seed,
            )  # fmt: skip
            runner.wide = wide_w
        refs: dict[str, float] = {}
        if "omics" in modalities:
            runner.reliability["omics"], refs = omics_reliability(graphs, len(tr), list(pre.genes))
        if "slide" in modalities:
            at = fd.slide_index
            train_slides = [at[s] for p in train_ids for s in mods.slides.get(p, [])]
            runner.reliability["slide"], refs["slides"] = slide_reliability(
                runner, graphs, train_slides
            )
        fm.meta["uncertainty"] = {
            "passes": unc.passes,
            "level": unc.level,
            "tau2": contribution_scale(fm, runner, g_tr, modalities, bs),
            "reliability_reference": refs,
        }
    if cfg.task == "survival":
        if unc is not None:  # the baseline hazard of the risks the test patients get
            tr_logits = mc_predict(fm, runner, g_tr, modalities, unc, bs=bs, seed=seed)[0].mean(0)
        else:
            tr_logits, _ = runner.run(g_tr, batch_size=bs, explain=False)
        tr_risk = fm.risk(tr_logits)
        fm.meta["train_risk_median"] = float(np.median(tr_risk))
        if bins is None:
            fm.baseline = breslow(tr_risk, tr["time"].to_numpy(), tr["event"].to_numpy())

    logits, weights = runner.run(g_te, batch_size=bs)
    key = "c_index" if cfg.task == "survival" else "auc"
    extra_cols: dict = {}
    if unc is not None:
        passes, plain, sd, uw, wo = mc_predict(
            fm, runner, g_te, modalities, unc, bs=bs, seed=seed + 1
        )
        logits = passes.mean(0)
        extra_cols, coverage = interval_columns(fm, passes, te, tr, unc.level)
        plain_logits = plain.mean(0)
    metrics = _score(fm, te, logits, tr)
    if wide_w is not None:
        metrics["deep_part_kept"] = kept_deep
    if plan.form_scores is not None and len(forms) > 1:  # the cross form this fold chose
        metrics["cross_prototypes"] = plan.form
    if unc is not None:
        metrics[f"{key}_unweighted"] = _score(fm, te, plain_logits, tr)[key]
        metrics["interval_coverage"], metrics["interval_level"] = coverage, unc.level
        if "set_mass" in extra_cols:  # grading: the coverage calibrated sets would show
            metrics["interval_mass"] = float(np.mean(extra_cols["set_mass"]))
        if cfg.task == "survival":
            extra_cols["risk_unweighted"] = fm.risk(plain_logits)
        else:
            prob = fm.probabilities(plain_logits)
            extra_cols.update({f"prob_unweighted_{c}": prob[:, c] for c in range(prob.shape[1])})
        for m in sd:
            extra_cols[f"sd_{m}"], extra_cols[f"uweight_{m}"] = sd[m], uw[m]
            if cfg.task == "survival":  # what the patient's risk would be without it
                extra_cols[f"risk_without_{m}"] = fm.risk(wo[m])
    if len(modalities) > 1:
        for m in modalities:
            lg, _ = runner.run(g_te, remove=(m,), batch_size=bs, explain=False)
            metrics[f"{key}_without_{m}"] = _score(fm, te, lg, tr)[key]
    preds = _prediction_rows(fm, te, logits, fold)
    for c, v in extra_cols.items():
        preds[c] = v
    if any((w or {}).get("modality") for w in weights):
        for m in modalities:
            preds[f"weight_{m}"] = [(w or {}).get("modality", {}).get(m, np.nan) for w in weights]
    if spec.wide and cfg.task == "survival":  # a risk term per modality (every bin: nll)
        for m in wide_mods:
            preds[f"linear_{m}"] = [
                (w or {}).get("linear", {}).get(m, [np.nan])[0] for w in weights
            ]
    res = FoldResult(fold, fm, metrics, preds, pd.DataFrame(history), best_epoch, train_ids)  # type: ignore[arg-type]
    res.explanations = {  # type: ignore[attr-defined]
        pid: _explain(w) for pid, w in zip(test_ids, weights, strict=True) if w is not None
    }
    res.preprocess = pre  # type: ignore[attr-defined]
    return res


@dataclass
class _WidePlan:
    """How a fold's wide part is fitted: its modalities, the slide terms' per-patient mean
    tiles (``cross``; raw features, the PCA's own centring is all it needs) and the penalty
    (chosen on validation patients with ``cross``); ``norm`` is the tile normalisation the
    network applies before its wide part sees the tiles (folded into the slide terms). With
    ``prototypes`` (``cross_prototypes``), ``slides`` holds the patients' prototype shares."""

    mods: list[str]
    slides: pd.DataFrame | None = None
    penalizer: float = 0.1
    n_slide: int = 8
    n_cross: int = 4
    norm: FeatureNorm | None = None
    prototypes: np.ndarray | None = None
    #: each slide-term form's score when the fold chose its form (``_cross_plan``)
    form_scores: dict[int | str, float] | None = None

    @property
    def n_prototypes(self) -> int:
        """The slide terms' form: 0 for the mean tile, else the number of tile prototypes."""
        return 0 if self.prototypes is None else len(self.prototypes)

    @property
    def form(self) -> int | str:
        """The form as ``cross_prototypes`` names it: :data:`NO_CROSS` without slide terms."""
        return NO_CROSS if self.slides is None else self.n_prototypes

    def baseline(self, task: str):
        from wsimm.fusion import LinearBaseline, SlideTerms

        st = None
        if self.slides is not None:  # a fresh PCA per fit (bootstrap refits run in turn)
            st = SlideTerms(self.slides, self.n_slide, self.n_cross, prototypes=self.prototypes)
        return LinearBaseline(
            task, use_omics="omics" in self.mods, penalizer=self.penalizer, slides=st
        )


#: penalties (per patient, both tasks) a wide part with slide terms chooses from, on the
#: fold's validation patients; grading also tries weaker ones (the interaction cohorts'
#: prototype crosses chose 0.001-0.03 there, survival never went below 0.03)
CROSS_PENALTIES = {
    "survival": (0.03, 0.1, 0.3, 1.0),
    "grade": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
}


def _fit_wide(
    cfg, mods, pre, tr: pd.DataFrame, plan: _WidePlan, n_out: int, fold: int, refit=False
):
    """The wide part of a fold's network: the linear model (penalised Cox, or multinomial
    logistic regression) on the modalities in ``plan.mods`` (with ``plan.slides``, slide
    terms and slide x omics crosses too), fitted on the patients in ``tr`` (the training
    patients; with ``refit``, training + validation once the epoch is chosen), written over
    the network's inputs."""
    n_classes = n_out if cfg.task == "grade" else 0
    try:
        lb = plan.baseline(cfg.task).fit(_wide_view(mods, plan), pre, tr, n_classes)
        w = lb.wide_weights(n_out)
        if plan.norm is not None:  # the network's tiles arrive normalised
            w = w.for_normalised_tiles(plan.norm.mean, plan.norm.std)
        return w
    except Exception as e:  # the deep part still trains; say why
        warnings.warn(
            f"fold {fold}: the fusion network's linear (wide) part could not be "
            f"{'refitted' if refit else 'fitted'} ({type(e).__name__}: {e}); "
            + ("it keeps the fit on training patients" if refit else "the fold trains without it"),
            WsimmWarning,
            stacklevel=2,
        )
        return None


def _refit_wide(cfg, mods, pre, trva: pd.DataFrame, plan: _WidePlan, n_out: int, fold: int):
    """The wide part refitted on training + validation patients once the epoch is chosen,
    standardised over those patients too (the network's genes and categories; means and sds
    as the ``clinical_omics_pca_*`` baseline has them, so their principal components agree)
    and rewritten over the network's own inputs."""
    own = pre.restandardised(mods, trva["patient_id"].tolist())
    w = _fit_wide(cfg, mods, own, trva, plan, n_out, fold, refit=True)
    return w.for_preprocessor(own, pre) if w is not None else None


def _wide_view(mods: Modalities, plan: _WidePlan) -> Modalities:
    return Modalities(
        omics=mods.omics if "omics" in plan.mods else None,
        clinical=mods.clinical if "clinical" in plan.mods else None,
        clinical_spec=mods.clinical_spec,
    )


#: the slide-term form "no slide terms" (``cross_prototypes: [none, 0, 16]``): the fold's wide
#: part is the plain clinical + omics one, as without ``cross``
NO_CROSS = "none"


def cross_forms(value) -> list[int | str]:
    """``fusion_kwargs cross_prototypes`` as the list of slide-term forms a fold chooses
    from (0: the patient's mean tile; P >= 2: its shares of P tile prototypes; ``none`` (or
    null) in a list: no slide terms at all): one number, or a list of them."""
    forms = list(value) if isinstance(value, list | tuple) else [value]
    forms = [NO_CROSS if f is None or str(f).lower() == NO_CROSS else f for f in forms]
    ok = (
        forms
        and all(
            f == NO_CROSS
            or (isinstance(f, int | np.integer) and not isinstance(f, bool) and (f == 0 or f >= 2))
            for f in forms
        )
        and any(f != NO_CROSS for f in forms)
    )
    if not ok:
        raise ConfigError(
            "fusion_kwargs cross_prototypes must be 0 (the mean tile), a number of tile "
            "prototypes >= 2, or a list of those (none: no slide terms, also a choice) for each "
            f"fold to choose from; got {value!r}"
        )
    return [f if f == NO_CROSS else int(f) for f in dict.fromkeys(forms)]


def _cross_plan(
    cfg, fd: FusionData, pre, tr, va, pids, forms, seed, *, mods, norm, n_out, n_slide, n_cross
) -> _WidePlan:
    """A wide part with slide terms (``cross``) for one fold: for each form of ``forms``
    (:func:`cross_forms`), the slide features of every patient of ``pids`` (mean tiles, or
    shares of prototypes fitted on the training patients' tiles) and the penalty chosen on
    the validation patients; with several forms, the one whose wide part (with its penalty)
    scores best over folds of the training patients (:func:`_cv_wide_score`; the first on
    ties). The fold network and its ``clinical_omics_slide_cross_*`` baseline both call it,
    so they make the same choice; the second call reads it from ``fd.cross_choices``."""
    train_ids = tr["patient_id"].tolist()

    def form_plan(n_protos: int | str) -> _WidePlan:
        if n_protos == NO_CROSS:  # the plain wide part (its penalty as without cross)
            return _WidePlan(list(mods), n_slide=n_slide, n_cross=n_cross)
        plan = _WidePlan(list(mods), n_slide=n_slide, n_cross=n_cross, norm=norm)
        if n_protos:  # prototypes of the training patients' tiles (cached per fold)
            plan.slides, plan.prototypes = _prototype_shares(
                cfg, fd, train_ids, pids, n_protos, seed, norm=norm
            )
        else:
            plan.slides = _patient_tile_means(fd, pids)
        return plan

    key = (tuple(sorted(train_ids)), tuple(sorted(va["patient_id"])), tuple(forms),
           tuple(mods), seed, n_out, n_slide, n_cross, cfg.task)  # fmt: skip
    if key not in fd.cross_choices:
        best, best_score, scores = None, -np.inf, {}
        for n_protos in forms:
            plan = form_plan(n_protos)
            if plan.slides is not None:
                plan.penalizer, score = _choose_wide_penalty(cfg, fd.mods, pre, tr, va, plan, n_out)
            if len(forms) > 1:  # forms differ more than penalties: a steadier score chooses
                score = _cv_wide_score(cfg, fd.mods, pre, tr, plan, n_out, seed)
            scores[n_protos] = score
            if best is None or score > best_score:
                best, best_score = plan, score
        assert best is not None
        fd.cross_choices[key] = (best.form, best.penalizer, scores)
    n_protos, penalizer, scores = fd.cross_choices[key]
    return replace(form_plan(n_protos), penalizer=penalizer, form_scores=dict(scores))


def _choose_wide_penalty(
    cfg, mods, pre, tr, va, plan: _WidePlan, n_out: int
) -> tuple[float, float]:
    """The penalty of a wide part with slide terms: the one of :data:`CROSS_PENALTIES` whose
    fit on the training patients scores best on the validation patients (c-index, or AUC
    for grading), with that score; no test patient is seen."""

    n_classes = n_out if cfg.task == "grade" else 0
    view, pids = _wide_view(mods, plan), va["patient_id"].tolist()
    best, best_pen = -np.inf, plan.penalizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pen in CROSS_PENALTIES[cfg.task]:
            try:
                lb = replace(plan, penalizer=pen).baseline(cfg.task).fit(view, pre, tr, n_classes)
                score = _wide_score(cfg, lb.predict(pids), va)
            except Exception:  # a penalty the solver cannot fit is not chosen
                continue
            if np.isfinite(score) and score > best:
                best, best_pen = score, pen
    return best_pen, best


def _wide_score(cfg, pred: np.ndarray, part: pd.DataFrame) -> float:
    """How well a wide part's predictions for ``part`` rank its outcomes: the c-index, or the
    (one-vs-rest macro) AUC, the metrics a run reports. The mean log-likelihood chose worse:
    it punishes a confident miss without bound, so on the `manifold` interaction cohort it
    kept the plain wide part (AUC 0.60) over crosses that reach 0.83."""
    from wsimm.survival import c_index

    if cfg.task == "survival":
        return float(c_index(part["time"].to_numpy(), part["event"].to_numpy(), pred))
    return grade_metrics(part["y"].to_numpy(), pred)["auc"]


#: folds of the training patients that score each slide-term form when there is a choice
FORM_FOLDS = 5


def _cv_wide_score(cfg, mods, pre, tr: pd.DataFrame, plan: _WidePlan, n_out: int, seed) -> float:
    """A wide part's mean score over :data:`FORM_FOLDS` folds of the training patients (fit on
    four fifths, score the fifth; its penalty as chosen): a steadier measure than one
    validation set of a few dozen patients, for choosing between slide-term forms."""
    n_classes = n_out if cfg.task == "grade" else 0
    view = _wide_view(mods, plan)
    order = np.random.default_rng([seed, 7]).permutation(len(tr))
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(FORM_FOLDS):
            held = np.zeros(len(tr), bool)
            held[order[k::FORM_FOLDS]] = True
            fit, score_on = tr[~held].reset_index(drop=True), tr[held].reset_index(drop=True)
            try:
                lb = plan.baseline(cfg.task).fit(view, pre, fit, n_classes)
                scores.append(
                    _wide_score(cfg, lb.predict(score_on["patient_id"].tolist()), score_on)
                )
            except Exception:  # a fold the solver cannot fit counts for nothing
                continue
    ok = [v for v in scores if np.isfinite(v)]
    return float(np.mean(ok)) if ok else -np.inf


def _patient_tile_means(fd: FusionData, pids: list[str]) -> pd.DataFrame:
    """Per patient with a slide, the mean of its slides' mean tiles (raw features): what the
    network's wide part computes from the tiles it is given. Read once per run (the folds
    and the ``cross`` baseline share them; they are features, not fits)."""
    cache = fd.tile_means
    rows = {}
    for p in pids:
        if p not in cache:
            ms = [
                np.asarray(fd.source.slide(sid), np.float64).mean(0)  # type: ignore[union-attr]
                for sid in fd.mods.slides.get(p) or []
            ]
            cache[p] = np.mean(ms, 0) if ms else None
        if cache[p] is not None:
            rows[p] = cache[p]
    return pd.DataFrame.from_dict(rows, orient="index")


#: tiles per slide the prototypes' k-means sees (a seeded draw per slide)
PROTOTYPE_TILES = 64


def _fold_norm(cfg: TrainConfig, fd: FusionData, train_ids: list[str]) -> FeatureNorm | None:
    """The tile normalisation of a fold's network: fitted on its training patients' tiles
    (``None`` with ``normalize`` off)."""
    if not cfg.normalize:
        return None
    with_slides = [p for p in train_ids if fd.mods.slides.get(p)]
    return FeatureNorm.fit(fd.source, with_slides)  # type: ignore[arg-type]


def _prototype_shares(
    cfg: TrainConfig,
    fd: FusionData,
    fit_ids: list[str],
    pids: list[str],
    n: int,
    seed: int,
    *,
    norm: FeatureNorm | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` tile prototypes, a k-means of up to :data:`PROTOTYPE_TILES` tiles per slide of
    the patients in ``fit_ids`` (the fold's training patients; tiles as the network is given
    them, normalised with ``norm``, or the fold's :func:`_fold_norm` when not given), and
    per patient of ``pids`` with a slide the share of its tiles whose nearest prototype is
    each one (the mean over its slides). Cached per fit in ``fd``, with its normalisation:
    the ``cross`` baseline reuses its fold network's fit without reading the tiles again."""
    from sklearn.cluster import KMeans

    fit = sorted(set(fit_ids))  # not the tables' row order
    key = (tuple(fit), n, seed, bool(cfg.normalize))
    if key not in fd.prototypes:
        if norm is None:
            norm = _fold_norm(cfg, fd, fit)
        rng = np.random.default_rng(seed)
        parts = []
        for p in fit:
            for sid in fd.mods.slides.get(p) or []:
                x = _network_tiles(fd, sid, norm)
                if len(x) > PROTOTYPE_TILES:
                    x = x[np.sort(rng.choice(len(x), PROTOTYPE_TILES, replace=False))]
                parts.append(x)
        x = np.concatenate(parts) if parts else np.zeros((0, 1))
        if len(x) < n:
            raise DataError(
                f"fusion_kwargs cross_prototypes: {n} prototypes need at least {n} training "
                f"tiles, have {len(x)}; use fewer cross_prototypes"
            )
        km = KMeans(n, n_init=4, random_state=seed).fit(x.astype(np.float64))
        protos = km.cluster_centers_.astype(np.float32)
        fd.prototypes[key] = (pd.DataFrame(dtype=np.float64), protos, norm)
    shares, protos, norm = fd.prototypes[key]
    new = [p for p in dict.fromkeys(pids) if p not in shares.index and fd.mods.slides.get(p)]
    if new:
        p2 = (protos.astype(np.float64) ** 2).sum(1)
        rows = {}
        for p in new:
            per = []
            for sid in fd.mods.slides[p]:
                x = _network_tiles(fd, sid, norm).astype(np.float64)
                near = (p2[None, :] - 2.0 * x @ protos.T.astype(np.float64)).argmin(1)
                per.append(np.bincount(near, minlength=n) / max(len(x), 1))
            rows[p] = np.mean(per, 0)
        add = pd.DataFrame.from_dict(rows, orient="index")
        shares = pd.concat([shares, add]) if len(shares) else add
        fd.prototypes[key] = (shares, protos, norm)
    return shares.reindex([p for p in pids if p in shares.index]), protos


def _network_tiles(fd: FusionData, sid: str, norm) -> np.ndarray:
    """A slide's tiles as the fusion network sees them (float32, normalised with ``norm``)."""
    x = np.asarray(fd.source.slide(sid), np.float32)  # type: ignore[union-attr]
    if norm is not None:
        x = (x - norm.mean) / norm.std
    return x


def _bootstrap_wide(cfg, mods, pre, trva, plan: _WidePlan, n_out, fold, *, n, seed) -> list:
    """The wide part refitted (as :func:`_refit_wide` does) on ``n`` bootstrap resamples of
    the training + validation patients (uncertainty weighting: one per Monte Carlo pass),
    quietly skipping resamples it cannot be fitted on."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WsimmWarning)
        for b in range(n):
            idx = np.random.default_rng([seed, 104729, b]).integers(0, len(trva), len(trva))
            w = _refit_wide(cfg, mods, pre, trva.iloc[idx], plan, n_out, fold)
            if w is not None:
                out.append(w)
    return out


def _fit_member(
    cfg, net, runner, fm, objective, tg, graphs, parts, *, p_drop, rng, gen, bar, wide_alone, epochs
):
    """Train one network for ``epochs``; keep the weights of the epoch with the lowest
    validation loss (with ``wide_alone``, the untrained network, i.e. its fitted wide part
    alone, is a candidate)."""
    import torch
    from torch_geometric.data import Batch

    g_tr, g_va = graphs
    tr, va = parts
    device, bs = runner.device, cfg.graph_batch_size
    bar, task_id = bar
    # lazy layers take their sizes from a first batch before the optimiser sees them
    first = Batch.from_data_list(g_tr[: min(bs, len(g_tr))]).to(device)
    with torch.no_grad():
        net(first, runner.tiles(first))
    job = current()
    ddp = job.wrap(net, partial=True)  # DDP under torchrun
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(g_tr) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    fm.model = net
    sel = EpochSelection(cfg.patience, bar=bar, task_id=task_id)
    val_idx = torch.arange(len(tr), len(tr) + len(va), device=device)
    if wide_alone:  # the untrained network (deep part's last layer at zero) is the wide part
        # alone: epoch -1, so the deep part is kept only from an epoch that beats it on the
        # validation patients; a fold where none does keeps it (``deep_part_kept: 0``)
        tr_idx = torch.arange(len(tr), device=device)
        train_loss, _ = _evaluate(runner, fm, objective, tg, g_tr, tr_idx, None, bs)
        val_loss, scores = _evaluate(runner, fm, objective, tg, g_va, val_idx, (tr, va), bs)
        sel.end_epoch(net, -1, train_loss, val_loss, scores)
    n_types = len(net.mods)
    for epoch in range(epochs):
        ddp.train()
        perm = rng.permutation(len(g_tr))
        total, seen = 0.0, 0
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            if cfg.task == "survival" and cfg.survival_loss == "cox" and len(idx) < 2:
                continue
            draw = torch.rand(len(idx), n_types, generator=gen)
            tile_seed = int(rng.integers(0, 2**31))
            mine, off = job.step_items(list(idx))  # this process's shard of the batch
            b = Batch.from_data_list([g_tr[j] for j in mine]).to(device)
            keep = _keep_masks(b, net.mods, p_drop, draw[off:])
            out = ddp(b, runner.tiles(b, max_tiles=cfg.max_tiles, seed=tile_seed), keep=keep)
            whole = torch.cat([g_tr[j].pidx for j in idx]).to(device)
            aux_w = float(getattr(getattr(net, "mil", None), "aux_weight", 0.0) or 0.0)
            aux = None if out.aux_loss is None else aux_w * out.aux_loss
            if out.align_loss is not None:  # contrastive slide <-> omics alignment
                term = float(net.spec.contrastive) * out.align_loss
                aux = term if aux is None else aux + term
            loss, value = job.batch_loss(
                out.logits,
                len(idx),
                lambda lg, whole=whole: objective(lg, tg, whole),
                aux=aux,
                aux_weight=1.0,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += value * len(idx)
            seen += len(idx)
        val_loss, scores = _evaluate(runner, fm, objective, tg, g_va, val_idx, (tr, va), bs)
        if sel.end_epoch(net, epoch, total / max(seen, 1), val_loss, scores):
            if bar is not None:
                bar.update(task_id, advance=epochs - epoch - 1)
            break
    sel.restore(net)
    return sel.history, sel.best_epoch


def _evaluate(runner, fm, objective, tg, graphs, idx, score_parts, bs: int):
    """The loss of the network (eval mode) on ``graphs``, whose targets are ``tg`` rows
    ``idx``, and, with ``score_parts = (train, val)`` tables, the validation scores."""
    import torch

    logits, _ = runner.run(graphs, batch_size=bs, explain=False)
    with torch.no_grad():
        loss = float(objective(torch.as_tensor(logits, device=runner.device), tg, idx))
    if score_parts is None:
        return loss, None
    tr, va = score_parts
    return loss, _score(fm, va, logits, tr, full=False)


def _explain(w: dict, top: int = 5) -> dict:
    out = {"modality_weights": w["modality"]}
    if "linear" in w:  # per modality, its term of the linear part (one value per output)
        out["linear_terms"] = w["linear"]
    if "coattention" in w:  # per gene group, where on the slides it looks
        out["coattention"] = w["coattention"]
    for m, nodes in w["nodes"].items():
        ranked = sorted(nodes.items(), key=lambda kv: -kv[1])[:top]
        out[f"top_{m}"] = [[k, round(v, 5)] for k, v in ranked]
    return out


def _bins(cfg: TrainConfig, tr: pd.DataFrame) -> tuple[TimeBins | None, int]:
    if cfg.task == "survival":
        if cfg.survival_loss == "nll":
            bins = TimeBins.fit(tr["time"].to_numpy(), tr["event"].to_numpy(), cfg.n_bins)
            return bins, bins.n_bins
        return None, 1
    return None, int(tr["y"].max()) + 1 if len(tr) else 2


def save_fusion_fold(res: FoldResult, fdir: Path) -> None:
    res.model.save(fdir)
    (fdir / "preprocess.json").write_text(json.dumps(res.preprocess.to_dict()))  # type: ignore[attr-defined]
    (fdir / "explanations.json").write_text(
        json.dumps(json_clean(res.explanations), indent=1)  # type: ignore[attr-defined]
    )


# -- baselines on the same folds ---------------------------------------------------------------


def baseline_plan(cfg: TrainConfig, modalities: list[str]) -> list[tuple[str, dict]]:
    """The baselines for this run: ``(name, how)`` with ``how`` either ``{"linear": ...}`` or
    ``{"fusion": ..., "modalities": [...]}``."""
    lin = "cox" if cfg.task == "survival" else "logreg"
    plan: list[tuple[str, dict]] = []
    if "clinical" in modalities:
        plan.append((f"clinical_{lin}", {"linear": False}))
        if "omics" in modalities:
            plan.append((f"clinical_omics_pca_{lin}", {"linear": True}))
    if "omics" in modalities:
        plan.append(("omics_net", {"fusion": "concat", "modalities": ["omics"]}))
    if "slide" in modalities:
        plan.append(("slide_mil", {"fusion": "concat", "modalities": ["slide"]}))
    if "clinical" in modalities and len(modalities) > 1:
        plan.append(("clinical_net", {"fusion": "concat", "modalities": ["clinical"]}))
    if cfg.fusion_kwargs.get("cross") and {"slide", "omics"} <= set(modalities):
        # the run's wide part alone: what its slide x omics crosses reach without a network
        plan.append((f"clinical_omics_slide_cross_{lin}", {"linear": "cross"}))
    extras = any(cfg.fusion_kwargs.get(k) for k in EXTRA_KWARGS) or not cfg.fusion_kwargs.get(
        "deep", True
    )
    if len(modalities) > 1:
        for f in ("late", "concat", "kronecker", "graph"):
            if f != cfg.fusion or extras:  # the plain graph when the run's has extras
                plan.append((f"{f}_fusion", {"fusion": f, "modalities": modalities}))
    if cfg.baselines == "none":
        return []
    if cfg.baselines != "auto":
        want = [b.strip() for b in cfg.baselines.split(",") if b.strip()]
        names = [n for n, _ in plan]
        unknown = sorted(set(want) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown baseline(s) {', '.join(unknown)} for this run; choose from "
                f"{', '.join(names)}, auto or none"
            )
        plan = [p for p in plan if p[0] in want]
    return plan


def fit_linear_fold(
    cfg: TrainConfig,
    fd: FusionData,
    table: pd.DataFrame,
    sets: dict[str, list[str]],
    fold: int,
    *,
    use_omics: bool | str,
) -> FoldResult:
    """A linear baseline (Cox or logistic) on clinical (+ PCA of omics) for one fold; with
    ``use_omics="cross"`` also the slide terms of the graph fusion's ``cross`` wide part
    (mean-tile PCA and its products with the omics components; tiles normalised and the
    penalty chosen on the validation patients as the wide part does), i.e. that wide part
    alone."""
    from wsimm.fusion import LinearBaseline

    rows = table.set_index("patient_id")
    tr = rows.loc[sets["train"] + sets["val"]].reset_index()  # no epochs to pick: use both
    te = rows.loc[sets["test"]].reset_index()
    pre = Preprocessor.fit(fd.mods, tr["patient_id"].tolist())
    n_classes = int(table["y"].max()) + 1 if cfg.task == "grade" else 0
    if use_omics == "cross":  # the fold network's choice (its prototypes are cached)
        kw = dict(cfg.fusion_kwargs)
        plan = _cross_plan(
            cfg, fd, Preprocessor.fit(fd.mods, sets["train"]),
            rows.loc[sets["train"]].reset_index(), rows.loc[sets["val"]].reset_index(),
            tr["patient_id"].tolist() + sets["test"], cross_forms(kw.get("cross_prototypes", 0)),
            cfg.seed * 1000 + fold, mods=["omics", "clinical"], norm=None, n_out=n_classes or 1,
            n_slide=int(kw.get("cross_slide_pcs", 8)), n_cross=int(kw.get("cross_omics_pcs", 4)),
        )  # fmt: skip
        lb = plan.baseline(cfg.task).fit(fd.mods, pre, tr, n_classes)
    else:
        lb = LinearBaseline(cfg.task, use_omics=use_omics).fit(fd.mods, pre, tr, n_classes)
    fm = FoldModel(model=None, norm=None, bins=None, meta={"task": cfg.task})
    if cfg.task == "survival":
        tr_risk = lb.predict(tr["patient_id"].tolist())
        fm.baseline = breslow(tr_risk, tr["time"].to_numpy(), tr["event"].to_numpy())
        fm.meta["train_risk_median"] = float(np.median(tr_risk))
        logits = lb.predict(te["patient_id"].tolist())[:, None]
    else:
        logits = np.log(np.clip(lb.predict(te["patient_id"].tolist()), 1e-12, None))
    metrics = _score(fm, te, logits, tr)
    preds = _prediction_rows(fm, te, logits, fold)
    res = FoldResult(fold, fm, metrics, preds, pd.DataFrame(), -1, tr["patient_id"].tolist())
    res.linear = lb  # type: ignore[attr-defined]
    res.preprocess = pre  # type: ignore[attr-defined]
    return res


def run_baselines(
    cfg: TrainConfig,
    fd: FusionData,
    table: pd.DataFrame,
    fold_sets: dict[int, dict[str, list[str]]],
    out: Path,
    *,
    device: str,
    bar=None,
    fold_cfgs: dict[int, TrainConfig] | None = None,
) -> dict[str, dict]:
    """Fit every baseline of :func:`baseline_plan` on the run's folds; write
    ``baselines/<name>/predictions.csv``; return per baseline its folds, mean and std.
    ``fold_cfgs``: per fold, the settings the run's model trained with there (``--tune``
    chooses them per fold); the network baselines train with the same."""
    results: dict[str, dict] = {}
    for name, how in baseline_plan(cfg, fd.mods.names):
        rows, preds, failed = [], [], {}
        for k, sets in fold_sets.items():
            k_cfg = (fold_cfgs or {}).get(int(k), cfg)
            try:
                if "linear" in how:
                    res = fit_linear_fold(k_cfg, fd, table, sets, k, use_omics=how["linear"])
                else:  # network baselines: the plain networks, without the run's extras
                    kw = {
                        k: v
                        for k, v in k_cfg.fusion_kwargs.items()
                        if k not in EXTRA_KWARGS + EXTRA_SETTINGS + TEST_TIME_KWARGS + ("deep",)
                    }
                    res = fit_fusion_fold(
                        replace(k_cfg, fusion_kwargs=kw),
                        fd,
                        table,
                        sets,
                        k,
                        fusion=how["fusion"],
                        modalities=how["modalities"],
                        device=device,
                        bar=bar,
                        label=name,
                    )
            except Exception as e:  # a baseline that breaks is reported, not fatal
                failed[str(k)] = f"{type(e).__name__}: {e}"
                continue
            rows.append({"fold": k, **res.metrics, "best_epoch": res.best_epoch})
            preds.append(res.predictions)
            lin = getattr(res, "linear", None)
            if lin is not None and current().main:  # what each fold's linear fit learnt
                fdir = out / "baselines" / name / f"fold_{k}"
                fdir.mkdir(parents=True, exist_ok=True)
                np.savez(fdir / "linear.npz", **lin.state())
                (fdir / "preprocess.json").write_text(json.dumps(res.preprocess.to_dict()))  # type: ignore[attr-defined]
        d = out / "baselines" / name
        if current().main:  # under torchrun, rank 0 writes
            d.mkdir(parents=True, exist_ok=True)
            if preds:
                pd.concat(preds, ignore_index=True).to_csv(d / "predictions.csv", index=False)
        mean, std = summarise_folds(cfg.task, rows)
        results[name] = {"folds": rows, "mean": mean, "std": std, "failed": failed}
    return results


# -- loading a fusion run back ------------------------------------------------------------------


def load_fusion_fold(directory: str | Path, device: str = "cpu") -> FoldModel:
    """A saved fusion fold: ``model`` is the :class:`~wsimm.fusion.FusionNet` (or ensemble) in
    eval mode, with the fold's tile normalisation, time bins and meta; the fold's fitted
    :class:`~wsimm.fusion.Preprocessor` is ``fm.preprocess``."""
    from safetensors.torch import load_file

    from wsimm.errors import ConfigError
    from wsimm.fusion._model import FusionEnsemble, FusionNet, FusionSpec

    d = Path(directory)
    need = [d / "meta.json", d / "model.safetensors", d / "preprocess.json"]
    if not all(p.is_file() for p in need):
        raise ConfigError(
            f"{d}: not a trained fusion fold (needs {', '.join(p.name for p in need)})"
        )
    meta = json.loads((d / "meta.json").read_text())
    pre = Preprocessor.from_dict(json.loads((d / "preprocess.json").read_text()))
    spec = FusionSpec(**meta["spec"])
    index = [[pre.genes[a].index(x) for x in genes] for _, a, genes in pre.kinds]
    members = []
    for _ in range(int(meta.get("ensemble") or 1)):
        net = FusionNet(spec)
        net.set_gene_index(index, pre.proj)
        members.append(net)
    model = members[0] if len(members) == 1 else FusionEnsemble(members)
    t = load_file(str(d / "model.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    model.to(device).eval()
    norm = FeatureNorm(t["norm.mean"].numpy(), t["norm.std"].numpy()) if "norm.mean" in t else None
    bins = TimeBins.from_dict(meta["bins"]) if meta.get("bins") else None
    fm = FoldModel(model=model, norm=norm, bins=bins, meta=meta)
    fm.preprocess = pre  # type: ignore[attr-defined]
    return fm
