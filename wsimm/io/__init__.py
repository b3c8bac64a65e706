"""AnnData views (tile, slide, patient) of feature stores and runs, for scanpy notebooks."""

from __future__ import annotations

from wsimm.io._anndata import join_omics, patients_to_anndata, slides_to_anndata, to_anndata

__all__ = ["join_omics", "patients_to_anndata", "slides_to_anndata", "to_anndata"]
