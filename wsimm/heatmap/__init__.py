"""``wsimm heatmap``: attention and risk heatmaps that open in a pathologist's own viewer.

``tile_scores`` scores every tile of a slide with a trained run (attention per branch; risk
contributions for survival; optionally on a denser overlapping grid), ``render`` turns them into an
image (:class:`ScoreField` renders any region at any scale), and ``export`` writes the PNG
overlay, pyramidal TIFF, QuPath GeoJSON and top/bottom tile gallery of one slide;
``make_heatmaps`` does it for the slides of a store.
"""

from __future__ import annotations

from wsimm.heatmap._export import (
    FORMATS,
    HeatmapReport,
    export,
    make_heatmaps,
    parse_formats,
    render,
)
from wsimm.heatmap._render import ScoreField, colorize, smooth_scores, write_overlay_tiff
from wsimm.heatmap._scores import TileScores, choose_folds, tile_scores

__all__ = [
    "FORMATS",
    "HeatmapReport",
    "ScoreField",
    "TileScores",
    "choose_folds",
    "colorize",
    "export",
    "make_heatmaps",
    "parse_formats",
    "render",
    "smooth_scores",
    "tile_scores",
    "write_overlay_tiff",
]
