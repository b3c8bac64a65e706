"""Tile grids at an exact physical resolution (pure numpy geometry) and exact tile reads."""

from __future__ import annotations

from wsimm.tiling._grid import TileGrid, TileSpec, plan_grid, read_tile, tissue_fractions

__all__ = ["TileGrid", "TileSpec", "plan_grid", "read_tile", "tissue_fractions"]
