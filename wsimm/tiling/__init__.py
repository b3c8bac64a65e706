"""Tile grids at an exact physical resolution (pure numpy geometry) and exact tile reads."""

from __future__ import annotations

from wsimm.tiling._grid import (
    TileGrid,
    TileSpec,
    best_level,
    grid_from_store,
    plan_grid,
    read_tile,
    read_tiles,
    tissue_fractions,
)
from wsimm.tiling._reader import TiffTileReader, open_tile_reader

__all__ = [
    "TiffTileReader",
    "TileGrid",
    "TileSpec",
    "best_level",
    "grid_from_store",
    "open_tile_reader",
    "plan_grid",
    "read_tile",
    "read_tiles",
    "tissue_fractions",
]
