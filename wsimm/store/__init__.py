"""The Zarr v3 cohort feature store: versioned, complete-or-absent slides, whole-bag reads."""

from __future__ import annotations

from wsimm.store._h5 import export_h5, import_h5
from wsimm.store._store import (
    ENCODING_TYPE,
    ENCODING_VERSION,
    FeatureStore,
    chunk_rows,
    encoder_id,
    open_store,
    read_downsample,
    sanitize_slide_id,
    slide_id_from_path,
)

__all__ = [
    "ENCODING_TYPE",
    "ENCODING_VERSION",
    "FeatureStore",
    "chunk_rows",
    "encoder_id",
    "export_h5",
    "import_h5",
    "open_store",
    "read_downsample",
    "sanitize_slide_id",
    "slide_id_from_path",
]
