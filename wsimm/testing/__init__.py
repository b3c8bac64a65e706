"""Synthetic data for tests, examples, benchmarks and ``wsimm demo``: pyramidal H&E-like
slides with ground-truth masks, and multi-modal cohorts with a known risk."""

from __future__ import annotations

from wsimm.testing._cohort import Cohort, make_cohort
from wsimm.testing._slide import SyntheticSlide, write_synthetic_slide

__all__ = ["Cohort", "SyntheticSlide", "make_cohort", "write_synthetic_slide"]
