"""``wsimm view``: a run's slides and heatmaps in the browser.

:func:`serve` starts a local web server (bound to ``127.0.0.1`` unless asked otherwise) that
serves a small canvas viewer written for wsimm (no JavaScript fetched from the internet): the
slide as a deep-zoom pyramid cut on demand through wsimm's readers, the run's heatmaps as
semi-transparent overlays rendered tile by tile from the scores, the top and bottom tiles as
outlines, and a side panel with the patient's prediction, label, fusion weights and, for
survival runs, the Kaplan-Meier risk groups. :class:`DeepZoom` is the pyramid geometry.
"""

from __future__ import annotations

from wsimm.view._server import ViewerApp, ViewerServer, serve
from wsimm.view._tiles import DeepZoom, TileCache, read_dz_tile

__all__ = ["DeepZoom", "TileCache", "ViewerApp", "ViewerServer", "read_dz_tile", "serve"]
