"""Pipelines that run several stages over a cohort: ``tile_slides``."""

from __future__ import annotations

from wsimm.pipeline._tile import SlideResult, TileReport, tile_slides

__all__ = ["SlideResult", "TileReport", "tile_slides"]
