from __future__ import annotations

import pytest

from wsimm.testing import bags_to_store, make_mil_cohort


@pytest.fixture(scope="session")
def small_grade(tmp_path_factory):
    """A quick cohort for guards and plumbing (24 patients, small bags)."""
    d = tmp_path_factory.mktemp("small_grade")
    c = make_mil_cohort(24, task="grade", seed=5, feature_dim=16, tiles_per_slide=(20, 40))
    bags_to_store(c.bags, d / "s.zarr")
    c.labels.to_csv(d / "labels.csv", index=False)
    return c, d / "s.zarr", d / "labels.csv"


@pytest.fixture(scope="session")
def small_survival(tmp_path_factory):
    d = tmp_path_factory.mktemp("small_surv")
    c = make_mil_cohort(30, task="survival", seed=6, feature_dim=16, tiles_per_slide=(20, 40))
    bags_to_store(c.bags, d / "s.zarr")
    c.labels.to_csv(d / "labels.csv", index=False)
    return c, d / "s.zarr", d / "labels.csv"
