"""Labels/outcome tables: reading, validating, and matching rows to slides in the store."""

from __future__ import annotations

import numbers
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wsimm._table import listing as _listing
from wsimm._table import read_table
from wsimm.errors import DataError, WsimmWarning
from wsimm.train._config import TrainConfig


@dataclass
class Examples:
    """The patients a run can use: one row per patient (``patient_id``, outcome columns
    ``y`` or ``time``/``event``) and each patient's slide ids in the store."""

    table: pd.DataFrame
    slides: dict[str, list[str]]
    classes: list | None = None

    @property
    def ids(self) -> list[str]:
        return self.table["patient_id"].tolist()


def _slide_key(v: str) -> str:
    from wsimm.slide import SLIDE_SUFFIXES
    from wsimm.store import sanitize_slide_id, slide_id_from_path

    low = v.lower()
    if "/" in v or "\\" in v or any(low.endswith(s) for s in SLIDE_SUFFIXES):
        return slide_id_from_path(v)
    return sanitize_slide_id(v)


def load_examples(
    cfg: TrainConfig,
    store_slides: list[str] | None,
    *,
    require_outcomes: bool = True,
    slides_required: bool = True,
) -> Examples:
    """Read the labels table named in ``cfg`` and return the patients to train on.

    Errors (one line, naming the file and the fix): missing columns, empty ids, NaN or
    negative times, events other than 0/1, NaN labels, one patient with conflicting outcomes,
    one slide under two patients. Warnings: rows whose slide is not in the store, and patients
    left without any slide (they are not used; the slide-only task cannot score them).

    With ``slides_required=False`` (fusion), patients without slides stay (they have other
    modalities), the slide column may be absent, and ``store_slides=None`` means no store.
    """
    src = str(cfg.labels)
    df = read_table(src)
    need = [cfg.patient_col]
    if slides_required or store_slides is not None:
        need.append(cfg.slide_col)
    outcome = (
        [cfg.label_col]
        if cfg.task == "grade"
        else [cfg.time_col, cfg.censorship_col or cfg.event_col]
    )
    has_outcomes = require_outcomes or all(c in df.columns for c in outcome)
    if has_outcomes:
        need += outcome
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(
            f"{src}: missing column(s) {', '.join(missing)} (has {_listing(df.columns, 12)}); "
            "name the right ones with --patient-col/--slide-col/--label-col/--time-col/--event-col"
        )
    df = df.copy()
    pid = df[cfg.patient_col]
    if pid.isna().any() or (pid.astype(str).str.strip() == "").any():
        rows = (np.flatnonzero(pid.isna() | (pid.astype(str).str.strip() == "")) + 2).tolist()
        raise DataError(f"{src}: empty {cfg.patient_col} on line(s) {_listing(rows)}")
    df["patient_id"] = pid.astype(str).str.strip()
    sl = df[cfg.slide_col] if cfg.slide_col in df.columns else pd.Series([""] * len(df))
    df["slide_id"] = [
        "" if (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else _slide_key(str(v))
        for v in sl
    ]

    cols: list[str]
    if not has_outcomes:
        cols = []
    elif cfg.task == "grade":
        y = df[cfg.label_col]
        bad = df.loc[y.isna(), "patient_id"].unique()
        if len(bad):
            raise DataError(
                f"{src}: no {cfg.label_col} for patient(s) {_listing(bad)}; drop those rows "
                "or fill the label"
            )
        df["y"] = y
        cols = ["y"]
    else:
        t = pd.to_numeric(df[cfg.time_col], errors="coerce")
        bad = df.loc[t.isna() | (t < 0) | np.isinf(t), "patient_id"].unique()
        if len(bad):
            raise DataError(
                f"{src}: {cfg.time_col} is missing, not a number, infinite or negative for "
                f"patient(s) {_listing(bad)}; survival times must be finite and >= 0"
            )
        col = cfg.censorship_col or cfg.event_col
        e = pd.to_numeric(df[col], errors="coerce")
        if e.isna().any() or not e.isin([0, 1]).all():
            bad = df.loc[e.isna() | ~e.isin([0, 1]), "patient_id"].unique()
            raise DataError(
                f"{src}: {col} must be 0 or 1 for every row (patient(s) {_listing(bad)})"
            )
        df["time"] = t.astype(float)
        df["event"] = (1 - e if cfg.censorship_col else e).astype(int)
        cols = ["time", "event"]

    per_patient = df.groupby("patient_id", sort=False)[cols].nunique(dropna=False)
    conflict = per_patient.index[(per_patient > 1).any(axis=1)] if cols else []
    if len(conflict):
        raise DataError(
            f"{src}: patient(s) {_listing(conflict)} have different outcomes on different "
            "rows; a patient has one outcome"
        )
    with_slide = df[df["slide_id"] != ""]
    owners = with_slide.groupby("slide_id")["patient_id"].nunique()
    shared = owners.index[owners > 1]
    if len(shared):
        raise DataError(
            f"{src}: slide(s) {_listing(shared)} belong to more than one patient; a slide "
            "belongs to one patient"
        )

    slides: dict[str, list[str]] = {}
    unmatched = []
    if store_slides is None and not slides_required:
        with_slide = with_slide.iloc[:0]
    avail = set(store_slides) if store_slides is not None else None
    for p, s in zip(with_slide["patient_id"], with_slide["slide_id"], strict=True):
        if avail is not None and s not in avail:
            unmatched.append(s)
            continue
        lst = slides.setdefault(p, [])
        if s not in lst:
            lst.append(s)
    if unmatched:
        warnings.warn(
            f"{src}: {len(unmatched)} row(s) name slides that are not (complete) in the store: "
            f"{_listing(unmatched)}; they are ignored",
            WsimmWarning,
            stacklevel=2,
        )
    for p in slides:  # a patient's slides in id order: not the table's row order
        slides[p].sort()
    table = df.groupby("patient_id", sort=True)[["slide_id", *cols]].first().reset_index()
    table = table.drop(columns="slide_id")
    dropped = table.loc[~table["patient_id"].isin(slides), "patient_id"].tolist()
    if not slides_required:
        dropped = []
    if dropped:
        warnings.warn(
            f"{src}: {len(dropped)} patient(s) have no slide in the store and are left out of "
            f"this slide-only run: {_listing(dropped)}",
            WsimmWarning,
            stacklevel=2,
        )
    if slides_required:
        table = table[table["patient_id"].isin(slides)].reset_index(drop=True)
    if table.empty:
        raise DataError(
            f"{src}: no row matches a slide in the store; check --slide-col and that the "
            "slide ids (file names without extension) match the store's slide ids"
        )
    classes = None
    if cfg.task == "grade" and has_outcomes:
        classes = grade_classes(table["y"], cfg.grade_order, src, cfg.label_col)
        table["y"] = table["y"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return Examples(table=table, slides=slides, classes=classes)


def _natural_key(value) -> list:
    """Text with its runs of digits compared as numbers: G2 before G10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(value))]


def grade_classes(y: pd.Series, order: list | None, src: str, col: str) -> list:
    """The grade classes in the order the grades go (quadratic kappa reads it as one):
    ``order`` (``grade_order``) when given, matched as text; else numbers by value and text
    naturally (G2 before G10). Text without digits (low, mid, high) has no order to read, so
    three or more such classes sort alphabetically with a warning naming the fix."""
    present = list(pd.unique(y))
    if order:
        by_text = {str(c): c for c in present}
        unknown = sorted(set(by_text) - {str(o) for o in order})
        if unknown:
            raise DataError(
                f"{src}: {col} value(s) {_listing(unknown)} are not in grade_order "
                f"({', '.join(map(str, order))}); add them to it, or fix the labels"
            )
        classes = [by_text[str(o)] for o in order if str(o) in by_text]
    elif all(isinstance(c, numbers.Number) for c in present):
        classes = sorted(present)
    else:
        classes = sorted(present, key=_natural_key)
        if len(classes) > 2 and not all(re.search(r"\d", str(c)) for c in classes):
            warnings.warn(
                f"{src}: {col} classes are words, taken in alphabetical order "
                f"({' < '.join(map(str, classes))}), which quadratic kappa reads as the "
                f"grades' order; give the order with --grade-order (e.g. --grade-order "
                f"{','.join(map(str, classes))})",
                WsimmWarning,
                stacklevel=3,
            )
    if len(classes) < 2:
        raise DataError(f"{src}: {col} has a single class {classes}; nothing to learn")
    return classes


def warn_folds_missing_classes(splits: pd.DataFrame, ex: Examples, src: str) -> None:
    """Warn when a fold's test patients lack a grade class: its AUC is the macro over the
    classes it has (undefined, ``null`` in metrics.json, with one), so the folds' AUCs
    measure different things and the run's mean mixes them."""
    y = splits.loc[splits["set"] == "test"].merge(ex.table[["patient_id", "y"]], on="patient_id")
    n_classes = len(ex.classes or [])
    short = {int(k): sorted(set(range(n_classes)) - set(g["y"])) for k, g in y.groupby("fold")}
    short = {k: v for k, v in short.items() if v}
    if short:
        names = ex.classes or []
        missing = sorted({names[c] for v in short.values() for c in v}, key=str)
        counts = ex.table["y"].value_counts()
        sizes = ", ".join(f"{names[c]}: {int(counts.get(c, 0))}" for c in range(n_classes))
        warnings.warn(
            f"{src}: the test patients of fold(s) {_listing(sorted(short))} have no patient of "
            f"grade {', '.join(map(str, missing))} (patients per class: {sizes}): their AUC "
            "is over the classes they have (null in metrics.json where one is left), unlike "
            "the other folds' (use fewer --folds)",
            WsimmWarning,
            stacklevel=2,
        )
