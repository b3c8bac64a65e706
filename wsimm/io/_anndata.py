"""AnnData views of a feature store (and of a trained run): tiles, slides, patients.

- :func:`to_anndata`: one row per tile of a slide. ``X`` = the tile embeddings, ``obs`` = tile
  QC (and attention / risk contribution when a run is given), ``obsm["spatial"]`` = level-0
  tile centres (the store's top-left ``coords`` plus half a tile, where scverse and Visium put
  spots; the corners are ``obs["x"]``, ``obs["y"]``), ``uns["spatial"][slide_id]`` = a slide image
  and scale factors in the layout ``scanpy.pl.spatial`` and squidpy read.
- :func:`slides_to_anndata`: one row per slide, the mean tile embedding (or a run's MIL slide
  embedding).
- :func:`patients_to_anndata`: one row per patient (``obs_names`` = patient ids, the same ids an
  omics AnnData carries), slides averaged, outcomes and clinical variables in ``obs``;
  :func:`join_omics` puts it beside an omics AnnData (``obsm["X_wsimm"]``) for multi-omics
  notebooks, and the result is a valid ``wsimm train --omics`` input.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from wsimm.errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    SlideReadError,
    WsimmWarning,
)

__all__ = ["join_omics", "patients_to_anndata", "slides_to_anndata", "to_anndata"]


def _ad() -> Any:
    try:
        import anndata
    except ImportError as e:  # pragma: no cover - environment dependent
        raise MissingDependencyError("anndata", extra="scanpy", feature="AnnData views") from e
    return anndata


def _open(store: Any) -> Any:
    from wsimm.store import open_store
    from wsimm.store._store import FeatureStore

    return store if isinstance(store, FeatureStore) else open_store(store)


def _encoder(fs: Any, slide_id: str, encoder: str | None) -> str:
    have = fs.encoders(slide_id)
    if encoder is None:
        if not have:
            raise DataError(
                f"{fs.path}: slide {slide_id} has no features; run wsimm embed --encoder NAME"
            )
        return have[0]
    from wsimm.store._store import encoder_id

    if encoder_id(encoder) not in have:
        raise DataError(
            f"{fs.path}: slide {slide_id} has no {encoder!r} features (has "
            f"{', '.join(have) or 'none'}); run wsimm embed --encoder {encoder}"
        )
    return encoder


def _slide_image(fs: Any, slide_id: str, max_px: int, slides_dir: Any) -> tuple[np.ndarray, float]:
    """The slide at a thumbnail scale and its scale factor (image px per level-0 px)."""
    from wsimm.pipeline._tile import locate_source
    from wsimm.slide import open_slide

    a = fs.slide_attrs(slide_id)
    path = locate_source(a, slide_id, slides_dir)
    with open_slide(path, mpp=a.get("mpp")) as s:
        img = np.asarray(s.get_thumbnail((max_px, max_px)))[..., :3]
    return img, img.shape[1] / float(a["level0_dims"][0])


def to_anndata(
    store: Any,
    slide_id: str,
    *,
    encoder: str | None = None,
    run: Any = None,
    fold: str | int = "auto",
    image: bool | str = "auto",
    image_px: int = 2000,
    slides_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """One slide's tiles as an AnnData.

    Parameters
    ----------
    encoder
        Which features (default: the slide's first encoder; with ``run``, the run's).
    run
        A run directory (or loaded run): ``obs`` gains each tile's ``attention`` (per branch
        for multi-branch models) and, for survival, ``contribution``, with their within-slide
        percentiles, from the fold chosen as for heatmaps (``fold``).
    image
        Put a slide thumbnail (long side ``image_px``) in ``uns["spatial"]``: ``True``,
        ``False`` or ``"auto"`` (when the slide file is found).
    """
    ad = _ad()
    fs = _open(store)
    if slide_id not in fs:
        raise DataError(f"{fs.path}: no complete slide {slide_id!r}; check the slide id")
    r = None
    if run is not None:
        from wsimm.train import load_run
        from wsimm.train._predict import Run

        r = run if isinstance(run, Run) else load_run(run, fusion=True)
        if encoder is None:
            encoder = r.folds[0].meta["encoder"]
    enc = _encoder(fs, slide_id, encoder)
    x = fs.features(slide_id, enc).astype(np.float32)
    coords = fs.coords(slide_id)
    a = fs.slide_attrs(slide_id)
    obs = pd.DataFrame(
        {
            "slide_id": pd.Categorical([slide_id] * len(coords)),
            "x": coords[:, 0],
            "y": coords[:, 1],
            "tissue_fraction": fs.tissue_fraction(slide_id).astype(np.float32),
        },
        index=[f"{slide_id}:{i}" for i in range(len(coords))],
    )
    if r is not None:
        from wsimm.heatmap import tile_scores

        ts = tile_scores(r, fs, slide_id, fold=fold)
        for k, v in ts.scores.items():
            obs[k] = v
            obs[f"{k}_percentile"] = ts.percentile(k)
    var = pd.DataFrame(index=[f"{enc}_{j}" for j in range(x.shape[1])])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    size0 = float(a.get("tile_size0", a.get("tile_px", 1)))
    # spot centres, as scverse / Visium place spots (corners stay in obs x, y)
    adata.obsm["spatial"] = coords.astype(np.float64) + size0 / 2
    lib: dict[str, Any] = {
        "scalefactors": {"spot_diameter_fullres": size0, "tissue_hires_scalef": 1.0},
        "metadata": {
            "source": str(a.get("source", "")),
            "mpp": float(a.get("mpp", np.nan)),
            "target_mpp": float(a.get("target_mpp", np.nan)),
            "tile_px": int(a.get("tile_px", 0)),
            "encoder": enc,
            "coordinates": "level-0 pixel centre of each tile (top-left corners: obs x, y)",
        },
    }
    if image:
        try:
            img, scale = _slide_image(fs, slide_id, image_px, slides_dir)
        except (DataError, SlideReadError) as e:  # not found, or not a slide (imported h5)
            if image is True:
                raise
            warnings.warn(
                f"{slide_id}: no slide image to put in uns['spatial'] ({e}); pass "
                "slides_dir=... where the slide files are",
                WsimmWarning,
                stacklevel=2,
            )
        else:
            lib["images"] = {"hires": img}
            lib["scalefactors"]["tissue_hires_scalef"] = scale
    adata.uns["spatial"] = {slide_id: lib}
    return adata


def _slide_embeddings(fs: Any, ids: list[str], encoder: str | None, run: Any, fold: int) -> Any:
    """``(n_slides, D)`` mean tile embeddings, or one fold model's MIL slide embeddings."""
    if run is None:
        return np.stack([fs.features(s, _encoder(fs, s, encoder)).astype(np.float32).mean(0)
                         for s in ids]), f"mean of {encoder or 'tile'} features"  # fmt: skip
    import torch

    from wsimm.train import load_run
    from wsimm.train._predict import Run

    r = run if isinstance(run, Run) else load_run(run)
    folds = [int(fm.meta["fold"]) for fm in r.folds]
    if fold not in folds:
        raise ConfigError(f"{r.path}: the run has no fold {fold} (it has {folds})")
    fm = r.folds[folds.index(fold)]
    enc = fm.meta["encoder"]
    out = []
    fm.model.eval()
    with torch.inference_mode():
        for s in ids:
            xt = torch.from_numpy(fs.features(s, _encoder(fs, s, enc)).astype(np.float32))
            if fm.norm is not None:
                xt = fm.norm.apply(xt)
            out.append(fm.model(xt).embedding.float().reshape(-1).numpy())
    return np.stack(out), f"{fm.meta['model']} slide embedding, fold {fold}"


def slides_to_anndata(
    store: Any,
    *,
    slides: list[str] | None = None,
    encoder: str | None = None,
    run: Any = None,
    fold: int = 0,
) -> Any:
    """One row per slide: the mean of its tile embeddings, or with ``run`` the MIL slide
    embedding of one fold's model (``fold``; one model, so rows are comparable)."""
    ad = _ad()
    fs = _open(store)
    ids = list(slides) if slides else fs.slides()
    if not ids:
        raise DataError(f"{fs.path}: the store has no complete slides")
    x, what = _slide_embeddings(fs, ids, encoder, run, fold)
    obs = pd.DataFrame(
        {
            "n_tiles": [len(fs.coords(s)) for s in ids],
            "mpp": [float(fs.slide_attrs(s).get("mpp", np.nan)) for s in ids],
            "source": [str(fs.slide_attrs(s).get("source", "")) for s in ids],
        },
        index=pd.Index(ids, name="slide_id"),
    )
    adata = ad.AnnData(X=x, obs=obs)
    adata.uns["wsimm"] = {"embedding": what, "store": str(fs.path)}
    return adata


def patients_to_anndata(
    store: Any,
    labels: str | os.PathLike[str] | pd.DataFrame,
    *,
    patient_col: str = "patient_id",
    slide_col: str = "slide_id",
    clinical: str | os.PathLike[str] | pd.DataFrame | None = None,
    encoder: str | None = None,
    run: Any = None,
    fold: int = 0,
) -> Any:
    """One row per patient with slides in the store: their slides' embeddings averaged.

    ``obs_names`` are the patient ids (join with an omics AnnData on them); ``obs`` holds the
    labels table's other per-patient columns (outcomes) and, with ``clinical``, the clinical
    table's columns; ``obs["n_slides"]`` counts the slides.
    """
    from wsimm._table import read_table
    from wsimm.train._tables import _slide_key

    ad = _ad()
    fs = _open(store)
    df = labels.copy() if isinstance(labels, pd.DataFrame) else read_table(str(labels))
    missing = [c for c in (patient_col, slide_col) if c not in df.columns]
    if missing:
        raise DataError(
            f"{labels if not isinstance(labels, pd.DataFrame) else 'labels'}: no column(s) "
            f"{', '.join(missing)}; name them with patient_col= / slide_col="
        )
    df = df[df[patient_col].notna()]
    df[patient_col] = df[patient_col].astype(str)
    in_store = set(fs.slides())
    per: dict[str, list[str]] = {}
    for pid, sid in zip(df[patient_col], df[slide_col], strict=True):
        if isinstance(sid, str) and sid and _slide_key(sid) in in_store:
            per.setdefault(pid, []).append(_slide_key(sid))
    if not per:
        raise DataError(
            f"{fs.path}: no slide of the labels table is in the store; check {slide_col}"
        )
    pids = sorted(per)
    ids = sorted({s for v in per.values() for s in v})
    x, what = _slide_embeddings(fs, ids, encoder, run, fold)
    row = {s: i for i, s in enumerate(ids)}
    xp = np.stack([x[[row[s] for s in dict.fromkeys(per[p])]].mean(0) for p in pids])
    rest = [c for c in df.columns if c not in (patient_col, slide_col)]
    obs = df.groupby(patient_col)[rest].first().reindex(pids) if rest else pd.DataFrame(index=pids)
    obs.index = pd.Index(pids, name=patient_col)
    obs["n_slides"] = [len(dict.fromkeys(per[p])) for p in pids]
    if clinical is not None:
        cl = clinical.copy() if isinstance(clinical, pd.DataFrame) else read_table(str(clinical))
        if patient_col not in cl.columns:
            raise DataError(f"{clinical}: no {patient_col!r} column to join on")
        cl[patient_col] = cl[patient_col].astype(str)
        cl = cl.drop_duplicates(patient_col).set_index(patient_col)
        cl = cl[[c for c in cl.columns if c not in obs.columns]]
        obs = obs.join(cl, how="left")
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str).astype("category")
    adata = ad.AnnData(X=xp.astype(np.float32), obs=obs)
    adata.uns["wsimm"] = {"embedding": what, "store": str(fs.path)}
    return adata


def join_omics(patients: Any, omics: Any, *, key: str = "X_wsimm", how: str = "inner") -> Any:
    """The omics AnnData with the patients' slide embeddings as ``obsm[key]`` and their
    ``obs`` columns added. ``how="inner"`` keeps patients with both; ``"left"`` keeps every
    omics patient (slide embedding NaN where a patient has no slide)."""
    if how not in ("inner", "left"):
        raise ConfigError(f"how must be 'inner' or 'left', got {how!r}")
    o_ids = omics.obs_names.astype(str)
    p_ids = patients.obs_names.astype(str)
    keep = o_ids[o_ids.isin(p_ids)] if how == "inner" else o_ids
    if len(keep) == 0:
        raise DataError(
            "no patient id is shared by the omics AnnData and the slide AnnData; check that "
            "both are indexed by patient id"
        )
    out = omics[omics.obs_names.astype(str).isin(keep)].copy()
    pos = pd.Series(np.arange(len(p_ids)), index=p_ids)
    emb = np.full((out.n_obs, patients.n_vars), np.nan, np.float32)
    have = out.obs_names.astype(str).isin(p_ids)
    emb[have] = np.asarray(patients.X)[pos[out.obs_names.astype(str)[have]].to_numpy()]
    out.obsm[key] = emb
    extra = patients.obs[[c for c in patients.obs.columns if c not in out.obs.columns]]
    joined = out.obs.join(extra.set_axis(p_ids), how="left")
    out.obs = joined
    return out
