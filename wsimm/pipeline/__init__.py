"""Pipelines that run several stages over a cohort: ``tile_slides``, ``embed_store``."""

from __future__ import annotations

from wsimm.pipeline._embed import embed_store
from wsimm.pipeline._tile import SlideResult, TileReport, tile_slides

__all__ = ["SlideResult", "TileReport", "embed_store", "tile_slides"]
