"""Synthetic data for tests, examples, benchmarks and ``wsimm demo``: pyramidal H&E-like
slides with ground-truth masks, multi-modal cohorts with a known risk, and MIL bag cohorts
with known witness tiles."""

from __future__ import annotations

from wsimm.testing._bags import MILCohort, bags_to_store, grid_coords, make_mil_cohort
from wsimm.testing._cohort import Cohort, make_cohort
from wsimm.testing._interaction import make_interaction_cohort
from wsimm.testing._latent import make_latent_cohort
from wsimm.testing._refs import patient_bags, reference_aucs, top_k_witness_share
from wsimm.testing._slide import SyntheticSlide, write_synthetic_slide

__all__ = [
    "Cohort",
    "MILCohort",
    "SyntheticSlide",
    "bags_to_store",
    "grid_coords",
    "make_cohort",
    "make_interaction_cohort",
    "make_latent_cohort",
    "make_mil_cohort",
    "patient_bags",
    "reference_aucs",
    "top_k_witness_share",
    "write_synthetic_slide",
]
