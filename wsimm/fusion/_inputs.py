"""Omics, gene groups and clinical tables for fusion: reading them, typing clinical columns,
and the per-fold preprocessing that is fitted on training patients only."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsimm._table import listing, read_table
from wsimm.errors import ConfigError, DataError, MissingDependencyError, WsimmWarning

__all__ = [
    "ASSAYS",
    "ClinicalSpec",
    "Modalities",
    "Omics",
    "Preprocessor",
    "check_gene_groups",
    "infer_clinical_types",
    "read_clinical",
    "read_gene_groups",
    "read_omics",
    "reserved_reason",
]

#: column suffixes of a wide omics table and the assay each names
ASSAYS = ("rnaseq", "cnv", "mut")
ASSAY_SUFFIXES = tuple(f"_{a}" for a in ASSAYS)
UNGROUPED = "ungrouped"


def _patients(df: pd.DataFrame, col: str, src: str) -> pd.DataFrame:
    """One row per patient (the first row; omics and clinical values repeat on a patient's
    slide rows), indexed by the patient id as a string."""
    if col not in df.columns:
        raise DataError(
            f"{src}: no {col!r} column (has {', '.join(map(str, df.columns[:10]))}...); "
            "name the patient column with --patient-col"
        )
    ids = df[col]
    if ids.isna().any():
        raise DataError(f"{src}: empty {col} on {int(ids.isna().sum())} row(s)")
    df = df.assign(**{col: ids.astype(str).str.strip()})
    return df.groupby(col, sort=False).first()


def _warn_differing_rows(raw: pd.DataFrame, col: str, src: str, used: list) -> None:
    """Warn when a patient's repeated rows (one per slide) differ in a column the run uses
    (``used``): :func:`_patients` keeps the first, and the others would vanish unseen."""
    ids = raw[col].astype(str).str.strip()
    rep = raw.loc[ids.duplicated(keep=False), list(used)]
    if not len(rep) or not len(rep.columns):
        return
    differ = rep.groupby(ids[rep.index], sort=False).nunique(dropna=True).gt(1)
    bad = differ.index[differ.any(axis=1)]
    if len(bad):
        cols = differ.columns[differ.loc[bad].any(axis=0)]
        warnings.warn(
            f"{src}: patient(s) {listing(bad)} have several rows that differ (in "
            f"{listing(cols, 4)}); the first row of each is used (one row per patient, or "
            "the same values on each of a patient's rows, avoids this)",
            WsimmWarning,
            stacklevel=3,
        )


@dataclass
class Omics:
    """Per-assay matrices, each ``(patients, genes)`` float32 with NaN for missing values.

    A patient whose row is missing (or all NaN) in an assay has no such assay."""

    assays: dict[str, pd.DataFrame]
    source: str = ""

    @property
    def patients(self) -> list[str]:
        ids: dict[str, None] = {}
        for df in self.assays.values():
            ids.update(dict.fromkeys(df.index))
        return list(ids)

    def has(self, assay: str) -> pd.Series:
        """Per patient (all patients of the omics), whether the assay was measured."""
        df = self.assays[assay]
        return df.notna().any(axis=1).reindex(self.patients, fill_value=False)


def read_omics(path: str | os.PathLike[str], *, patient_col: str = "patient_id") -> Omics:
    """Read omics from an AnnData ``.h5ad`` (obs = patients; assays from ``var["assay"]``,
    from ``_rnaseq``/``_cnv``/``_mut`` suffixes of the var names, from ``layers``, or else the
    whole ``X`` as ``rnaseq``) or a wide table with assay-suffixed columns (one row per patient
    or per slide; repeated rows of a patient are collapsed)."""
    src = str(path)
    p = Path(path)
    if p.suffix.lower() == ".h5ad":
        if not p.is_file():
            raise DataError(f"{p}: omics file not found")
        try:
            import anndata
        except ImportError as e:
            raise MissingDependencyError("anndata", extra="scanpy", feature="h5ad omics") from e
        try:
            ad = anndata.read_h5ad(p)
        except Exception as e:
            raise DataError(f"{p}: cannot read the AnnData file ({type(e).__name__}: {e})") from e
        idx = (
            ad.obs[patient_col].astype(str).to_numpy()
            if patient_col in ad.obs.columns
            else ad.obs_names.astype(str).to_numpy()
        )

        def frame(x, genes) -> pd.DataFrame:
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            df = pd.DataFrame(x.astype(np.float32), index=idx, columns=list(map(str, genes)))
            return df.groupby(level=0, sort=False).first()

        var = ad.var_names.astype(str)
        assays: dict[str, pd.DataFrame] = {}
        if "assay" in ad.var.columns:
            for a in pd.unique(ad.var["assay"].astype(str)):
                m = (ad.var["assay"].astype(str) == a).to_numpy()
                assays[a] = frame(ad.X[:, m], var[m])
        else:
            wide = _split_suffixed(frame(ad.X, var), src, required=False)
            assays.update(wide or {"rnaseq": frame(ad.X, var)})
        for name, layer in ad.layers.items():
            assays[str(name)] = frame(layer, var)
        return Omics(assays, src)

    raw = read_table(p)
    df = _patients(raw, patient_col, src)
    assays = _split_suffixed(df, src, required=True)
    _warn_differing_rows(
        raw, patient_col, src, [c for c in raw.columns if str(c).endswith(ASSAY_SUFFIXES)]
    )
    assert assays is not None
    return Omics(assays, src)


def _split_suffixed(
    df: pd.DataFrame, src: str, *, required: bool
) -> dict[str, pd.DataFrame] | None:
    out = {}
    for a in ASSAYS:
        cols = [c for c in df.columns if str(c).endswith(f"_{a}")]
        if cols:
            raw = df[cols]
            x = raw.apply(pd.to_numeric, errors="coerce").astype(np.float32)
            text = x.isna() & raw.notna()  # values that are there but are not numbers
            if text.to_numpy().any():
                where = text.any(axis=0)
                first = raw.loc[text[where.idxmax()], where.idxmax()].iloc[0]
                warnings.warn(
                    f"{src}: {int(text.to_numpy().sum())} value(s) in {int(where.sum())} "
                    f"column(s) are not numbers ({listing(where.index[where], 4)}; e.g. "
                    f"{first!r}); they are read as missing",
                    WsimmWarning,
                    stacklevel=3,
                )
            x.columns = [str(c)[: -len(a) - 1] for c in cols]
            out[a] = x
    if not out:
        if required:
            raise DataError(
                f"{src}: no omics columns; a wide omics table names them <gene>_rnaseq, "
                "<gene>_cnv or <gene>_mut (or pass an AnnData .h5ad)"
            )
        return None
    return out


def read_gene_groups(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Gene groups from a GMT file (``name<TAB>description<TAB>gene...``), a long table with
    ``group`` (or ``set``/``pathway``) and ``gene`` columns, or a wide table with one column
    per group (like ``signatures.csv``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: gene groups file not found")
    groups: dict[str, list[str]] = {}
    if p.suffix.lower() == ".gmt":
        for n, line in enumerate(p.read_text().splitlines(), 1):
            parts = [x.strip() for x in line.split("\t")]
            if not line.strip():
                continue
            if len(parts) < 3:
                raise DataError(f"{p}: line {n} is not GMT (name, description, genes by tabs)")
            groups[parts[0]] = [g for g in parts[2:] if g]
    else:
        df = read_table(p)
        low = {str(c).lower(): c for c in df.columns}
        gcol = next((low[c] for c in ("group", "set", "pathway") if c in low), None)
        if gcol is not None and "gene" in low:
            # one row per (group, gene): groups and their genes in sorted order, so that the
            # table's row order changes nothing
            for g, d in df.groupby(gcol, sort=True):
                groups[str(g)] = sorted(d[low["gene"]].dropna().astype(str).unique().tolist())
        else:
            for c in df.columns:
                groups[str(c)] = df[c].dropna().astype(str).str.strip().tolist()
    groups = {k: list(dict.fromkeys(v)) for k, v in groups.items() if v}
    if not groups:
        raise DataError(f"{p}: no gene groups found")
    return groups


def check_gene_groups(groups: dict[str, list[str]], omics: Omics, path: str) -> None:
    """Refuse gene groups that name none of the omics genes (a group file in one gene
    naming, HGNC symbols say, beside omics in another: without this every gene would go to
    the one ``ungrouped`` node and the run would say nothing); warn about groups none of
    whose genes are measured."""
    genes = {str(g) for df in omics.assays.values() for g in df.columns}
    wanted = {g for members in groups.values() for g in members}
    if not wanted & genes:
        low = {g.lower() for g in genes}
        hint = (
            "; they differ only in upper/lower case"
            if {g.lower() for g in wanted} & low
            else f" (the omics have e.g. {listing(sorted(genes), 3)}; the groups name e.g. "
            f"{listing(sorted(wanted), 3)})"
        )
        raise DataError(
            f"{path}: none of its {len(wanted)} gene(s) is a gene of {omics.source}{hint}; "
            "name genes as the omics columns do, without their _rnaseq/_cnv/_mut suffix"
        )
    empty = [g for g, members in groups.items() if not set(members) & genes]
    if empty:
        warnings.warn(
            f"{path}: {len(empty)} of {len(groups)} gene group(s) have no gene in "
            f"{omics.source} ({listing(empty, 5)}); they are left out",
            WsimmWarning,
            stacklevel=2,
        )


# -- clinical ---------------------------------------------------------------------------------


#: column names that are ids, outcomes or split bookkeeping, never features unless a user
#: names them: (pattern on the lower-cased name, why it is left out)
_RESERVED = (
    (r"^(unnamed:_?\d*|index|level_0)$", "a row index"),
    (r"(^|_)(id|ids|uuid|barcode)$", "an id"),
    (r"^(case|patient|sample|slide|subject|submitter)(_?(id|ids|name|barcode|uuid))?$", "an id"),
    (
        r"^(train|training|val|valid|validation|test|testing|split|splits|fold|folds|set|subset)$",
        "a split flag",
    ),
    (r"^(is_|in_)?(train|val|test)(ing)?(_set|_split|_fold|_flag)?$", "a split flag"),
    (
        r"censor|surviv|vital|^days_to_|(^|_)(os|pfs|pfi|dfs|dfi|dss|efs|rfs|ttp|ttr)(_|$)",
        "an outcome",
    ),
    (
        r"^(time|event|status|death|dead|deceased|outcome|label|target|y|disc_label|risk)$",
        "an outcome",
    ),
    (r"(_|^)(label|target)$", "an outcome"),
)


def reserved_reason(name: str) -> str | None:
    """Why a column named ``name`` is not a clinical feature by default (an id, an outcome, a
    split flag such as PORPOISE's ``train``), or ``None``."""
    import re

    low = re.sub(r"[.\-\s]+", "_", str(name).strip().lower())  # OS.time, PFI-time
    for pattern, why in _RESERVED:
        if re.search(pattern, low):
            return why
    return None


@dataclass
class ClinicalSpec:
    """Which clinical columns a run uses and how their types are decided.

    ``columns``: the columns used; ``overrides``: column -> ``numeric`` or ``categorical``,
    given by the user; ``excluded``: column -> why it was left out (ids, outcomes, split
    flags, omics). Types of the other columns are inferred per fold on the training patients
    (:meth:`infer`), never on the whole table."""

    columns: list[str]
    overrides: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)

    def infer(self, train: pd.DataFrame) -> dict[str, str]:
        """Column -> type, from the rows of ``train`` (the training patients)."""
        return infer_clinical_types(train, self.columns, self.overrides)


def infer_clinical_types(
    df: pd.DataFrame, columns: list[str], overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """Numeric columns with more than two distinct values are ``numeric``; text, booleans and
    0/1 flags are ``categorical``. ``overrides`` win. Pass the training patients' rows."""
    types = {}
    for c in columns:
        s = df[c]
        num = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        types[c] = "numeric" if num and s.dropna().nunique() > 2 else "categorical"
    for c, t in (overrides or {}).items():
        if t not in ("numeric", "categorical"):
            raise ConfigError(f"clinical type of {c!r} must be numeric or categorical, got {t!r}")
        if c not in types:
            raise ConfigError(f"clinical type given for {c!r}, which is not a clinical column")
        types[c] = t
    return types


def read_clinical(
    path: str | os.PathLike[str],
    *,
    patient_col: str,
    columns: list[str] | None,
    exclude: list[str],
    types: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, ClinicalSpec]:
    """One row per patient of the clinical columns.

    Without ``columns``, every column is used except: the ids and outcome columns of the run
    (``exclude``), omics-suffixed columns, and columns whose name marks an id, an outcome or a
    split flag (``train``, ``val``, ``fold``, ``censorship``, ``survival_months``, ``os_time``,
    ...; see :func:`reserved_reason`). The spec records every column left out and why. Columns
    named in ``columns`` are used as given, except the run's own ids and outcomes."""
    src = str(path)
    raw = read_table(path)
    df = _patients(raw, patient_col, src)
    excluded: dict[str, str] = {}
    run_cols = set(exclude)
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{src}: clinical column(s) {', '.join(missing)} not in the table "
                f"(has {', '.join(map(str, df.columns[:12]))}...)"
            )
    else:
        columns = []
        for c in df.columns:
            why = (
                "an id or outcome of this run"
                if c in run_cols
                else "omics"
                if any(str(c).endswith(f"_{a}") for a in ASSAYS)
                else reserved_reason(str(c))
            )
            if why is None:
                columns.append(c)
            elif why != "omics":
                excluded[str(c)] = why
        if not columns:
            raise DataError(f"{src}: no clinical columns left; name them with --clinical-cols")
    unknown = sorted(set(types or {}) - set(columns))
    if unknown:
        raise ConfigError(
            f"clinical type given for {', '.join(map(repr, unknown))}, which is not a clinical "
            f"column (used: {', '.join(map(str, columns))})"
        )
    spec = ClinicalSpec(list(columns), dict(types or {}), excluded)
    infer_clinical_types(df.iloc[:0], spec.columns, spec.overrides)  # check the overrides now
    _warn_differing_rows(raw, patient_col, src, columns)
    return df[columns], spec


@dataclass
class Modalities:
    """What a fusion run has per patient: slides (ids in the store), omics, clinical table."""

    slides: dict[str, list[str]] = field(default_factory=dict)
    omics: Omics | None = None
    clinical: pd.DataFrame | None = None
    clinical_spec: ClinicalSpec | None = None
    gene_groups: dict[str, list[str]] | None = None

    @property
    def names(self) -> list[str]:
        out = []
        if self.slides:
            out.append("slide")
        if self.omics is not None:
            out.append("omics")
        if self.clinical is not None:
            out.append("clinical")
        return out


# -- preprocessing fitted on training patients --------------------------------------------------


def _gene_stats(df: pd.DataFrame, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean and sd over the patients of ``ids`` that ``df`` has (NaN ignored)."""
    x = df.reindex([p for p in ids if p in df.index]).to_numpy(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes
        mu = np.nanmean(x, 0) if len(x) else np.zeros(x.shape[1])
        sd = np.nanstd(x, 0) if len(x) else np.ones(x.shape[1])
    return mu, sd


def _numeric_stats(col: pd.Series) -> tuple[float, float]:
    """A numeric clinical column's mean and sd (1 where it does not vary)."""
    v = pd.to_numeric(col, errors="coerce").dropna()
    mu = float(v.mean()) if len(v) else 0.0
    sd = float(v.std()) if len(v) > 1 else 1.0
    return mu, sd if sd > 1e-8 else 1.0


@dataclass
class Preprocessor:
    """Normalisation and vocabularies fitted on one fold's training patients.

    ``kinds``: the gene-group node kinds, ``(group, assay, genes)``; genes of an assay that are
    in no group form one ``ungrouped`` kind per assay. ``omics_mean``/``omics_std`` per assay
    and gene; ``clin_num``: column -> (mean, std); ``clin_cat``: column -> categories seen at
    least ``min_count`` times in training (others map to an unseen slot).
    """

    kinds: list[tuple[str, str, list[str]]] = field(default_factory=list)
    genes: dict[str, list[str]] = field(default_factory=dict)
    omics_mean: dict[str, np.ndarray] = field(default_factory=dict)
    omics_std: dict[str, np.ndarray] = field(default_factory=dict)
    clin_num: dict[str, tuple[float, float]] = field(default_factory=dict)
    clin_cat: dict[str, list[str]] = field(default_factory=dict)
    proj: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def fit(
        cls,
        mods: Modalities,
        train_ids: list[str],
        *,
        min_count: int = 5,
        ungrouped: bool = True,
        group_pcs: int | None = None,
    ) -> Preprocessor:
        """Fit on ``train_ids``. With ``group_pcs``, each gene-group kind also gets the top
        principal axes of its standardised genes over the training patients (``proj``,
        genes x pcs): the node network then reads a few components instead of every gene,
        which keeps it from memorising a few hundred patients."""
        pre = cls()
        if mods.omics is not None:
            for a, df in mods.omics.assays.items():
                mu, sd = _gene_stats(df, train_ids)
                keep = np.isfinite(mu) & np.isfinite(sd) & (sd > 1e-8)
                genes = [g for g, k in zip(df.columns, keep, strict=True) if k]
                pre.genes[a] = genes
                pre.omics_mean[a] = mu[keep].astype(np.float32)
                pre.omics_std[a] = sd[keep].astype(np.float32)
            groups = mods.gene_groups or {}
            for a, genes in pre.genes.items():
                gset = set(genes)
                used: set[str] = set()
                for g, members in groups.items():
                    sel = [x for x in members if x in gset]
                    if sel:
                        pre.kinds.append((g, a, sel))
                        used.update(sel)
                rest = [x for x in genes if x not in used]
                if rest and (ungrouped or not groups):
                    pre.kinds.append((UNGROUPED if groups else "all", a, rest))
            if group_pcs:
                tr_ids = [p for p in train_ids if p in set(mods.omics.patients)]
                mats = {a: pre.omics_matrix(mods.omics, a, tr_ids) for a in pre.genes}
                for _, a, genes in pre.kinds:
                    z, present = mats[a]
                    col = {g: i for i, g in enumerate(pre.genes[a])}
                    x = z[present][:, [col[g] for g in genes]].astype(np.float64)
                    k = max(1, min(group_pcs, len(genes), max(1, len(x) - 1)))
                    if len(x) > 1:
                        _, sv, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
                        # unit variance components: scale each axis by its training spread
                        scale = sv[:k] / np.sqrt(max(len(x) - 1, 1))
                        p_ = vt[:k].T / np.maximum(scale, 1e-6)
                    else:
                        p_ = np.eye(len(genes), k)
                    pre.proj.append(p_.astype(np.float32))
        if mods.clinical is not None and mods.clinical_spec is not None:
            tr = mods.clinical.reindex([p for p in train_ids if p in mods.clinical.index])
            for c, t in mods.clinical_spec.infer(tr).items():
                if t == "numeric":
                    pre.clin_num[c] = _numeric_stats(tr[c])
                else:
                    counts = tr[c].dropna().astype(str).value_counts()
                    pre.clin_cat[c] = sorted(counts.index[counts >= min_count].tolist())
        return pre

    def restandardised(self, mods: Modalities, ids: list[str]) -> Preprocessor:
        """The same genes, gene groups, clinical columns and categories, with the means and
        sds refitted on ``ids`` (a gene constant over them keeps its old ones): the
        standardisation of a linear model refitted on more patients than this one saw."""
        out = replace(self, omics_mean=dict(self.omics_mean), omics_std=dict(self.omics_std))
        if mods.omics is not None:
            for a, genes in self.genes.items():
                mu, sd = _gene_stats(mods.omics.assays[a][genes], ids)
                ok = np.isfinite(mu) & np.isfinite(sd) & (sd > 1e-8)
                out.omics_mean[a] = np.where(ok, mu, self.omics_mean[a]).astype(np.float32)
                out.omics_std[a] = np.where(ok, sd, self.omics_std[a]).astype(np.float32)
        if mods.clinical is not None and self.clin_num:
            tr = mods.clinical.reindex([p for p in ids if p in mods.clinical.index])
            out.clin_num = {c: _numeric_stats(tr[c]) for c in self.clin_num}
        return out

    # -- transforms ---------------------------------------------------------------------------
    def omics_matrix(
        self, omics: Omics, assay: str, pids: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Standardised ``(len(pids), genes)`` float32 (missing values at the training mean,
        i.e. 0) and per patient whether the assay was measured."""
        df = omics.assays[assay].reindex(pids)
        raw = df[self.genes[assay]].to_numpy(np.float32)
        present = ~np.isnan(raw).all(1)
        z = (raw - self.omics_mean[assay]) / self.omics_std[assay]
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).clip(-10, 10), present

    @property
    def clinical_columns(self) -> list[str]:
        return [*self.clin_num, *self.clin_cat]

    def clinical_slots(self) -> tuple[dict[str, int], int]:
        """Index of each clinical column's first category slot in one embedding table (a
        numeric column has one slot, a categorical one per category plus one for unseen)."""
        offs, n = {}, 0
        for c in self.clinical_columns:
            offs[c] = n
            n += 1 + len(self.clin_cat.get(c, []))
        return offs, n

    def clinical_nodes(
        self, clinical: pd.DataFrame, pid: str
    ) -> tuple[list[int], list[float], list[int]]:
        """The clinical nodes of one patient: variable index, standardised value (numeric),
        slot index (categorical); missing values give no node."""
        if pid not in clinical.index:
            return [], [], []
        row = clinical.loc[pid]
        offs, _ = self.clinical_slots()
        var, val, slot = [], [], []
        for i, c in enumerate(self.clinical_columns):
            v = row[c]
            if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v):
                continue
            if c in self.clin_num:
                x = pd.to_numeric(pd.Series([v]), errors="coerce").iloc[0]
                if not np.isfinite(x):
                    continue
                mu, sd = self.clin_num[c]
                var.append(i)
                val.append(float(np.clip((x - mu) / sd, -10, 10)))
                slot.append(offs[c])
            else:
                cats = self.clin_cat[c]
                s = str(v)
                j = cats.index(s) + 1 if s in cats else 0
                var.append(i)
                val.append(0.0)
                slot.append(offs[c] + j)
        return var, val, slot

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": [[g, a, genes] for g, a, genes in self.kinds],
            "genes": self.genes,
            "omics_mean": {a: v.tolist() for a, v in self.omics_mean.items()},
            "omics_std": {a: v.tolist() for a, v in self.omics_std.items()},
            "clin_num": {c: list(v) for c, v in self.clin_num.items()},
            "clin_cat": self.clin_cat,
            "proj": [p.tolist() for p in self.proj],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        return cls(
            kinds=[(g, a, list(genes)) for g, a, genes in d["kinds"]],
            genes={a: list(v) for a, v in d["genes"].items()},
            omics_mean={a: np.asarray(v, np.float32) for a, v in d["omics_mean"].items()},
            omics_std={a: np.asarray(v, np.float32) for a, v in d["omics_std"].items()},
            clin_num={c: (float(v[0]), float(v[1])) for c, v in d["clin_num"].items()},
            clin_cat={c: list(v) for c, v in d["clin_cat"].items()},
            proj=[np.asarray(p, np.float32) for p in d.get("proj", [])],
        )
