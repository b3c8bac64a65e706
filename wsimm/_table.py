"""Reading the tables users bring (CSV, TSV, parquet, zipped or gzipped CSV)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from wsimm.errors import DataError


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A table by its suffix: ``.parquet``/``.pq``, ``.tsv``/``.txt`` (tabs), otherwise CSV;
    ``.zip``/``.gz`` compressed files are read by the name inside."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: table not found")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        name = p.name.lower().removesuffix(".zip").removesuffix(".gz")
        sep = "\t" if name.endswith((".tsv", ".txt")) else ","
        return pd.read_csv(p, sep=sep)
    except Exception as e:
        raise DataError(f"{p}: cannot read the table ({type(e).__name__}: {e})") from e


def listing(items, n: int = 8) -> str:
    """The first ``n`` of ``items`` for a one-line message, with how many more there are."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more
