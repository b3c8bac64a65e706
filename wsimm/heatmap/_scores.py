"""Per-tile scores of one slide from a trained run.

- ``attention``: the model's tile attention (one column per branch for multi-branch models such
  as CLAM-MB: ``attention_<class>``).
- ``contribution`` (survival): each tile's share of the predicted risk. For attention-pooling
  models (ABMIL, gated ABMIL, CLAM) the slide embedding is ``sum_i a_i h_i``, so with the risk
  ``r`` linearised at that embedding the tile's contribution is ``a_i * dr/demb . h_i``; with a
  Cox head this is exact (the contributions add up to the risk minus the head's bias). Other
  models get gradient x input on the tile features.
- Fusion runs: the slide model's attention inside the fusion network, and the contribution
  through the whole patient graph (gradient of the risk with respect to the slide embedding,
  the patient's graph rebuilt from the run's tables with the fold's preprocessing).

With ``overlap`` the slide is tiled again on a denser grid (the store's tissue mask and tile
size, a smaller stride), the tiles are encoded with the run's encoder and scored by the trained
model, and renderers average the overlapping tiles, as CLAM does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError, DataError, WsimmWarning

__all__ = ["TileScores", "tile_scores"]


@dataclass
class TileScores:
    """Scores of every tile of one slide, with the geometry renderers need.

    Attributes
    ----------
    coords
        ``(N, 2)`` level-0 top-left ``x, y`` of the scored tiles.
    tile_size0
        Tile side in level-0 pixels.
    scores
        Score name -> ``(N,)`` raw values (``attention``, ``contribution``, ...).
    primary
        The score heatmaps show by default.
    prediction
        The slide's prediction (``pred_name`` and ``prob`` for grading, ``risk`` for survival).
    folds
        The fold models that scored it: the fold whose test set holds the slide's patient
        (an out-of-fold heatmap), or every fold averaged for slides the run never saw.
    """

    slide_id: str
    coords: np.ndarray
    tile_size0: float
    stride0: float
    dims: tuple[int, int]
    mpp: float
    scores: dict[str, np.ndarray]
    primary: str
    prediction: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    folds: list[int] = field(default_factory=list)
    patient_id: str | None = None
    source: str | None = None
    fingerprint: str | None = None
    tissue_mask: np.ndarray | None = None
    mask_downsample: float = 1.0
    target_mpp: float | None = None
    tile_px: int | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def percentile(self, name: str | None = None) -> np.ndarray:
        """Rank percentile within the slide, in ``(0, 1]`` (ties share their mean rank)."""
        from scipy.stats import rankdata

        v = self.scores[name or self.primary]
        return (rankdata(v, method="average") / max(len(v), 1)).astype(np.float32)

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: ``x``, ``y``, every score and its percentile."""
        df = pd.DataFrame({"x": self.coords[:, 0], "y": self.coords[:, 1]})
        for k, v in self.scores.items():
            df[k] = v
            df[f"{k}_percentile"] = self.percentile(k)
        return df

    def title(self) -> str:
        p = self.prediction
        if "pred_name" in p:
            pred = f"predicted {p['pred_name']} (p={p['prob']:.2f})"
        elif "risk" in p:
            pred = f"risk {p['risk']:+.2f}"
        else:
            pred = ""
        folds = (
            f"fold {self.folds[0]} (out-of-fold)"
            if len(self.folds) == 1
            else f"{len(self.folds)} folds averaged"
        )
        return " | ".join(x for x in (self.slide_id, pred, f"{self.model}, {folds}") if x)


# ------------------------------------------------------------------------------------------
def _risk_torch(logits: Any, discrete: bool) -> Any:
    """The risk a survival fold reports (``FoldModel.risk``), differentiable."""
    import torch

    if not discrete:
        return logits[:, 0]
    return -torch.cumprod(torch.sigmoid(-logits), 1).sum(1)


def _fold_scores(fm: Any, x: np.ndarray, device: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores of one slide's tiles under one fold model, and the slide's raw outputs."""
    import torch

    from wsimm.mil.abmil import Attention

    m = fm.model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    if fm.norm is not None:
        xt = fm.norm.apply(xt)
    survival = fm.task == "survival"
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        o = m(xt)
    logits = o.logits.float().cpu().numpy()[0]
    a = o.attention.float().cpu().numpy()
    if a.ndim == 2:
        names = fm.meta.get("classes") or list(range(a.shape[1]))
        for k in range(a.shape[1]):
            out[f"attention_{names[k]}"] = a[:, k]
    else:
        out["attention"] = a
    if not survival:
        return out, logits
    discrete = fm.bins is not None
    if hasattr(m, "fc") and isinstance(getattr(m, "attention", None), Attention):
        with torch.no_grad():
            h = m.fc(xt)
            att = o.attention if o.attention.dim() == 2 else o.attention[:, None]
        emb = o.embedding.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            r = _risk_torch(m.classify(emb), discrete).sum()
            (g,) = torch.autograd.grad(r, emb)
        g = g[0].reshape(-1, h.shape[1])  # (branches, hidden)
        contrib = (att * (h @ g.T)).sum(1)
    else:  # gradient x input on the tile features
        xg = xt.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            r = _risk_torch(m(xg).logits, discrete).sum()
            (g,) = torch.autograd.grad(r, xg)
        contrib = (xg * g).sum(1)
    out["contribution"] = contrib.detach().float().cpu().numpy()
    return out, logits


# ------------------------------------------------------------------------------------------
_FUSION_INPUTS: dict[tuple, Any] = {}


def _fusion_inputs(run: Any, fs: Any, encoder: str | None) -> Any:
    """The run's modalities (omics, clinical, slides of ``fs``), read once per run and store."""
    key = (str(run.path), str(fs.path))
    if key not in _FUSION_INPUTS:
        import warnings

        from wsimm.errors import WsimmWarning
        from wsimm.train._data import BagSource
        from wsimm.train._fusion import load_fusion_data
        from wsimm.train._tables import load_examples

        with warnings.catch_warnings():  # rows without slides here are expected
            warnings.simplefilter("ignore", WsimmWarning)
            ex = load_examples(run.config, fs.slides(), require_outcomes=False,
                               slides_required=False)  # fmt: skip
            slides = {p: v for p, v in ex.slides.items() if v}
            source = BagSource(str(fs.path), slides, encoder=encoder, cache=False)
            _FUSION_INPUTS[key] = load_fusion_data(run.config, ex, source)
    return _FUSION_INPUTS[key]


def _fusion_fold_scores(
    fm: Any, fd: Any, pid: str | None, slide_id: str, device: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A fusion fold's scores for one slide: the slide model's attention inside the fusion
    network, and (survival) each tile's contribution to the patient's predicted risk through
    the whole graph (the slide embedding's gradient, as for MIL runs)."""
    import torch
    from torch_geometric.data import Batch

    from wsimm.fusion import build_graphs
    from wsimm.mil.abmil import Attention

    mods = tuple(fm.meta["modalities"])
    if "slide" not in mods:
        raise ConfigError("this fusion run does not use slides: it has no tile scores to draw")
    if pid is None or slide_id not in fd.slide_index:
        raise DataError(
            f"slide {slide_id}: its patient is not in the run's labels table; fusion heatmaps "
            "need the patient's other modalities"
        )
    graphs = build_graphs(fd.mods, fm.preprocess, [pid], slide_index=fd.slide_index, use=mods)
    b = Batch.from_data_list(graphs).to(device)
    slide_ids = [fd.slide_ids[i] for i in b["slide"].sidx.tolist()]
    j = slide_ids.index(slide_id)
    parts = [fd.source.slide(s) for s in slide_ids]
    x = torch.from_numpy(np.concatenate(parts)).float().to(device)
    if fm.norm is not None:
        x = fm.norm.apply(x)
    sizes = torch.as_tensor([len(p) for p in parts], device=device)
    tb = torch.repeat_interleave(torch.arange(len(parts), device=device), sizes)
    sel = (tb == j).nonzero().squeeze(1)
    nets = list(fm.model.members) if hasattr(fm.model, "members") else [fm.model]
    captured: list[tuple[Any, Any]] = []

    def patch(mil: Any) -> None:
        orig = type(mil).pool

        def pool(xx, batch, n, y):
            emb, a, aux = orig(mil, xx, batch, n, y)
            emb = emb.detach().requires_grad_(True)
            captured.append((emb, a.detach(), xx.detach()))  # xx: the tiles as pooled
            return emb, a, aux

        mil.pool = pool

    for net in nets:
        patch(net.mil)
    try:
        with torch.enable_grad():
            out = fm.model(b, (x, tb))
            survival = fm.task == "survival"
            grads = None
            if survival:
                r = _risk_torch(out.logits, fm.bins is not None).sum()
                grads = torch.autograd.grad(r, [e for e, *_ in captured])
    finally:
        for net in nets:
            del net.mil.pool
    scores: dict[str, list[np.ndarray]] = {}
    for k, (net, (_, a, pooled_in)) in enumerate(zip(nets, captured, strict=True)):
        a_sel = a[sel]
        if a_sel.dim() == 2:
            names = fm.meta.get("classes") or list(range(a_sel.shape[1]))
            for c in range(a_sel.shape[1]):
                scores.setdefault(f"attention_{names[c]}", []).append(a_sel[:, c].cpu().numpy())
        else:
            scores.setdefault("attention", []).append(a_sel.cpu().numpy())
        if grads is not None:
            mil = net.mil
            if not (hasattr(mil, "fc") and isinstance(getattr(mil, "attention", None), Attention)):
                raise ConfigError(
                    f"risk contributions of a fusion run need an attention-pooling slide model "
                    f"(abmil, abmil_gated, clam); this run uses {fm.meta['spec']['slide_model']}"
                )
            with torch.no_grad():
                h = mil.fc(pooled_in[sel])
                g = grads[k][j].reshape(-1, h.shape[1])
                att = a_sel if a_sel.dim() == 2 else a_sel[:, None]
                contrib = (att * (h @ g.T)).sum(1)
            scores.setdefault("contribution", []).append(contrib.float().cpu().numpy())
    mean = {n: np.mean(v, 0).astype(np.float32) for n, v in scores.items()}
    if out.coattn is not None:  # where each gene group of the patient looks on this slide
        kinds = fm.preprocess.kinds
        co = out.coattn
        for g, k in enumerate(b["gene_group"].kind.tolist()):
            if bool(co.groups[0, g]):
                name = coattention_score_name(kinds[k][0], kinds[k][1])
                mean[name] = co.attn[0, g, sel].detach().float().cpu().numpy()
    spec = fm.meta.get("spec") or {}
    if spec.get("cross") and spec.get("wide"):  # each tile's part of the slide x omics terms
        with torch.no_grad():
            terms = [net.tile_cross_terms(b, (x, tb))[sel] for net in nets]
            t = torch.stack(terms).mean(0).float().cpu().numpy()
        if survival:
            mean["cross"] = t[:, 0]
        else:
            names = fm.meta.get("classes") or list(range(t.shape[1]))
            for c in range(t.shape[1]):
                mean[f"cross_{names[c]}"] = t[:, c]
    return mean, out.logits.detach().float().cpu().numpy()[0]


def coattention_score_name(group: str, assay: str) -> str:
    """The score name of a gene group's co-attention over tiles (``coattention_<group>_<assay>``,
    characters outside letters, digits, ``.``, ``-`` and ``_`` replaced by ``_``)."""
    import re

    return "coattention_" + re.sub(r"[^A-Za-z0-9._-]", "_", f"{group}_{assay}")


# ------------------------------------------------------------------------------------------
_PATIENTS: dict[tuple, dict[str, str]] = {}
_MISSING: set[str] = set()  # labels tables already warned about


def _slide_patient(cfg: Any, slide_id: str) -> str | None:
    """The patient the run's labels table gives for ``slide_id`` (``None`` when unknown);
    the table is read once per file version."""
    from wsimm._table import read_table
    from wsimm.train._tables import _slide_key

    path = Path(str(cfg.labels)) if cfg.labels else None
    if path is None:
        return None
    if not path.is_file():
        if str(path) not in _MISSING:
            _MISSING.add(str(path))
            warnings.warn(
                f"{path}: the run's labels table is not there, so which fold held each slide "
                "out is unknown: slides are scored by every fold (some may have trained on "
                "them); restore the table or pass --fold",
                WsimmWarning,
                stacklevel=2,
            )
        return None
    key = (str(path.resolve()), path.stat().st_mtime_ns, cfg.patient_col, cfg.slide_col)
    if key not in _PATIENTS:
        try:
            df = read_table(str(path))
        except Exception:
            return None
        mapping: dict[str, str] = {}
        if cfg.slide_col in df and cfg.patient_col in df:
            for pid, sid in zip(df[cfg.patient_col], df[cfg.slide_col], strict=True):
                if isinstance(sid, str) and sid:
                    mapping.setdefault(_slide_key(sid), str(pid))
        _PATIENTS[key] = mapping
    return _PATIENTS[key].get(slide_id)


def fold_position(run: Any, fold: str | int) -> int:
    """Index into ``run.folds`` of the fold numbered ``fold`` (a number or its text); one that
    the run lacks is a ConfigError listing the run's folds."""
    fold_ids = [int(fm.meta["fold"]) for fm in run.folds]
    k = str(fold).strip()
    if not k.lstrip("-").isdigit() or int(k) not in fold_ids:
        raise ConfigError(
            f"{run.path}: no fold {fold} in this run; --fold must be auto, all or one of the "
            f"run's folds {fold_ids}"
        )
    return fold_ids.index(int(k))


def choose_folds(run: Any, slide_id: str, fold: str | int = "auto") -> tuple[list[int], str | None]:
    """Indices (into ``run.folds``) of the fold models to score a slide with.

    ``"auto"``: the fold whose test set holds the slide's patient, so the heatmap comes from a
    model that never saw the slide; every fold for slides outside the run. ``"all"``: every
    fold. An integer: that fold.
    """
    fold_ids = [int(fm.meta["fold"]) for fm in run.folds]
    pid = _slide_patient(run.config, slide_id)
    if fold == "all":
        return list(range(len(fold_ids))), pid
    if fold != "auto":
        return [fold_position(run, fold)], pid
    if pid is not None and (run.path / "splits.csv").is_file():
        sp = pd.read_csv(run.path / "splits.csv", dtype={"patient_id": str})
        hit = sp[(sp["patient_id"] == pid) & (sp["set"] == "test")]
        if len(hit) and int(hit["fold"].iloc[0]) in fold_ids:
            return [fold_ids.index(int(hit["fold"].iloc[0]))], pid
    return list(range(len(fold_ids))), pid


def _dense_features(
    fs: Any,
    slide_id: str,
    overlap: float,
    *,
    encoder: str,
    weights: str | None,
    device: str,
    source: str,
    batch_size: int,
    bar: Any,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tile the slide again with ``overlap`` inside the store's tissue mask and encode the
    tiles with the run's encoder: ``(coords, features, stride0)``."""
    from wsimm.encoders import create_encoder
    from wsimm.slide import open_slide
    from wsimm.tiling import TileSpec, grid_from_store, plan_grid, read_tiles

    base = grid_from_store(fs, slide_id)
    a = fs.slide_attrs(slide_id)
    spec = TileSpec(
        mpp=base.spec.mpp,
        tile_px=base.spec.tile_px,
        overlap=overlap,
        min_tissue=base.spec.min_tissue,
        edge_tiles=base.spec.edge_tiles,
    )
    mask, mds = fs.tissue_mask(slide_id)
    with open_slide(source, mpp=float(a["mpp"])) as s:
        grid = plan_grid(
            s.dimensions, s.level_downsamples, float(a["mpp"]), spec, mask=mask, mask_downsample=mds
        )
        enc = create_encoder(encoder, weights=weights, device=device)
        stain = None
        if a.get("stain_model"):
            from wsimm.tiling._stain import StainModel, normalize_stains

            stain = StainModel.from_dict(a["stain_model"])
        feats = np.empty((len(grid), enc.cfg.embed_dim), np.float32)
        task = bar.add_task(f"{slide_id}: dense tiles", total=len(grid), rate="")
        row = 0
        for batch in read_tiles(s, grid, batch_size=batch_size):
            if stain is not None:
                batch = normalize_stains(batch, stain)
            feats[row : row + len(batch)] = enc.encode(batch)
            row += len(batch)
            bar.advance(task, len(batch))
        bar.remove_task(task)
    # the store keeps float16 features: score the dense tiles at the same precision
    return grid.coords, feats.astype(np.float16).astype(np.float32), grid.stride0


def tile_scores(
    run: Any,
    store: Any,
    slide_id: str,
    *,
    fold: str | int = "auto",
    overlap: float = 0.0,
    device: str = "cpu",
    weights: str | None = None,
    slides_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    bar: Any = None,
) -> TileScores:
    """Score every tile of ``slide_id`` with a trained run.

    Parameters
    ----------
    run
        A run directory from ``wsimm train`` or a loaded :class:`wsimm.train.Run`.
    store
        The feature store (path or opened store) holding the slide's tiles and features.
    fold
        ``"auto"`` (the fold that held the slide's patient out, else all folds), ``"all"`` or a
        fold number; scores of several folds are averaged.
    overlap
        ``0``: the store's tiles. ``0 < overlap < 1``: tile the slide again with this overlap
        and score the denser tiles (needs the slide file and the encoder).
    weights, slides_dir
        Encoder weights for the dense tiles (default: those the store records), and a folder
        to find slide files that moved since tiling.
    """
    from wsimm._progress import _NullProgress
    from wsimm.pipeline._tile import locate_source
    from wsimm.store import open_store
    from wsimm.store._store import FeatureStore
    from wsimm.train import load_run
    from wsimm.train._predict import Run

    r = run if isinstance(run, Run) else load_run(run, device, fusion=True)
    fs = store if isinstance(store, FeatureStore) else open_store(store)
    fusion = r.config.fusion != "none"
    if fusion and overlap:
        raise ConfigError("--overlap re-scoring is for slide-only runs, not fusion runs")
    if slide_id not in fs:
        raise DataError(
            f"{fs.path}: no complete slide {slide_id!r} (has {', '.join(fs.slides()[:8])}"
            f"{' ...' if len(fs.slides()) > 8 else ''}); check --slide"
        )
    meta = r.folds[0].meta
    enc = meta["encoder"]
    if enc not in fs.encoders(slide_id):
        raise DataError(
            f"{fs.path}: slide {slide_id} has no {enc!r} features (has "
            f"{', '.join(fs.encoders(slide_id)) or 'none'}); run wsimm embed --encoder {enc}"
        )
    a = fs.slide_attrs(slide_id)
    idx, pid = choose_folds(r, slide_id, fold)
    bar = bar if bar is not None else _NullProgress()
    coords, stride0 = fs.coords(slide_id), float(a["stride0"])
    if overlap and overlap > float(a.get("params", {}).get("overlap", 0.0)) + 1e-9:
        fa = fs.feature_attrs(slide_id, enc)
        coords, x, stride0 = _dense_features(
            fs,
            slide_id,
            overlap,
            encoder=fa.get("encoder", enc),
            weights=weights or fa.get("weights"),
            device=device,
            source=locate_source(a, slide_id, slides_dir),
            batch_size=batch_size,
            bar=bar,
        )
    elif not fusion:
        x = fs.features(slide_id, enc).astype(np.float32)
    if not fusion and x.shape[1] != meta["in_dim"]:
        raise DataError(
            f"{fs.path}: {slide_id} features are {x.shape[1]}-d but the run was trained on "
            f"{meta['in_dim']}-d {enc!r} features"
        )
    per: list[dict[str, np.ndarray]] = []
    logits = []
    for i in idx:
        if fusion:
            fd = _fusion_inputs(r, fs, enc)
            s, lg = _fusion_fold_scores(r.folds[i], fd, pid, slide_id, device)
        else:
            s, lg = _fold_scores(r.folds[i], x, device)
        per.append(s)
        logits.append(lg)
    scores = {k: np.mean([p[k] for p in per], 0).astype(np.float32) for k in per[0]}
    fm0 = r.folds[idx[0]]
    if fm0.task == "survival":
        risks = [r.folds[i].risk(lg[None])[0] for i, lg in zip(idx, logits, strict=True)]
        risk = float(np.mean(risks))
        prediction: dict[str, Any] = {"risk": risk}
        primary = "contribution"
    else:
        probs = [r.folds[i].probabilities(lg[None])[0] for i, lg in zip(idx, logits, strict=True)]
        prob = np.mean(probs, 0)
        classes = fm0.meta.get("classes") or list(range(len(prob)))
        k = int(prob.argmax())
        prediction = {"pred": k, "pred_name": str(classes[k]), "prob": float(prob[k])}
        prediction.update({f"prob_{c}": float(p) for c, p in enumerate(prob)})
        primary = f"attention_{classes[k]}" if f"attention_{classes[k]}" in scores else "attention"
    mask, mds = fs.tissue_mask(slide_id)
    return TileScores(
        slide_id=slide_id,
        coords=np.asarray(coords, np.int64),
        tile_size0=float(a["tile_size0"]),
        stride0=stride0,
        dims=(int(a["level0_dims"][0]), int(a["level0_dims"][1])),
        mpp=float(a["mpp"]),
        scores=scores,
        primary=primary,
        prediction=prediction,
        model=(
            f"{meta['fusion']} fusion ({meta['spec']['slide_model']})"
            if fusion
            else str(meta["model"])
        ),
        folds=[int(r.folds[i].meta["fold"]) for i in idx],
        patient_id=pid,
        source=a.get("source"),
        fingerprint=a.get("fingerprint"),
        tissue_mask=mask.astype(bool),
        mask_downsample=float(mds),
        target_mpp=float(a["target_mpp"]),
        tile_px=int(a["tile_px"]),
    )
