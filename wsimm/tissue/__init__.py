"""Tissue detection at thumbnail scale, with pen, debris and glare rejection, and QC images."""

from __future__ import annotations

from wsimm.tissue._detect import (
    PRESETS,
    TissueMask,
    TissueParams,
    detect_tissue,
    detect_tissue_rgb,
    pen_ink,
    resolve_tissue_params,
    thumbnail_downsample,
)
from wsimm.tissue._qc import draw_qc

__all__ = [
    "PRESETS",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "detect_tissue_rgb",
    "draw_qc",
    "pen_ink",
    "resolve_tissue_params",
    "thumbnail_downsample",
]
