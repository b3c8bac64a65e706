"""Synthetic cohorts: structure, missing modalities, determinism, and the planted signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsimm.errors import ConfigError
from wsimm.testing import make_cohort


def _harrell(time, event, risk):
    num = den = 0.0
    for i in np.nonzero(event)[0]:
        later = time > time[i]
        den += later.sum()
        num += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    return num / den


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(300, seed=11)


def test_structure_and_missing_modalities(cohort):
    lab, pat = cohort.labels, cohort.patients
    assert set(lab.columns) >= {"patient_id", "slide_id", "grade", "time", "event"}
    assert pat.patient_id.is_unique and len(pat) == 300
    per_patient = lab[lab.slide_id != ""].groupby("patient_id").size()
    assert (per_patient > 1).any(), "some patients must have several slides"
    no_slide = set(pat.patient_id) - set(per_patient.index)
    assert no_slide, "some patients must have no slide"
    assert (lab.loc[lab.patient_id.isin(no_slide), "slide_id"] == "").all()
    assert lab.slide_id[lab.slide_id != ""].is_unique
    assert 0 < (~pat.has_omics).sum() < 100
    assert set(cohort.omics.index) == set(pat.patient_id[pat.has_omics])
    assert {c.rsplit("_", 1)[1] for c in cohort.omics.columns} == {"rnaseq", "cnv", "mut"}
    assert set(cohort.bags) == set(lab.slide_id[lab.slide_id != ""])
    for sid, bag in cohort.bags.items():
        assert bag.dtype == np.float16 and bag.shape[1] == 64
        assert cohort.tile_signal[sid].shape == (bag.shape[0],)


def test_censoring_event_convention_and_grades(cohort):
    pat = cohort.patients
    assert pat.event.isin([0, 1]).all()
    assert pat.event.mean() == pytest.approx(0.6, abs=0.08)  # 40% censored
    assert (pat.time > 0).all() and np.isfinite(pat.time).all()
    assert sorted(pat.grade.unique()) == [0, 1, 2]


def test_signal_is_planted_in_every_modality(cohort):
    pat = cohort.patients.set_index("patient_id")
    # the true risk orders survival well; each single factor carries part of it
    c_true = _harrell(pat.time.to_numpy(), pat.event.to_numpy(), pat.risk.to_numpy())
    assert c_true > 0.75
    for col in ("z_slide", "z_omics", "z_clinical"):
        c = _harrell(pat.time.to_numpy(), pat.event.to_numpy(), pat[col].to_numpy())
        assert 0.55 < c < c_true
    # clinical: age tracks z_clinical; omics: the first group tracks z_omics
    clin = cohort.clinical.set_index("patient_id")
    assert np.corrcoef(clin.age, pat.z_clinical)[0, 1] > 0.7
    g = cohort.gene_groups["GROUP1"][0]
    om = cohort.omics[f"{g}_rnaseq"]
    assert abs(np.corrcoef(om, pat.loc[om.index, "z_omics"])[0, 1]) > 0.3
    # slides: signal tiles are shifted; their share grows with z_slide
    frac = {sid: sig.mean() for sid, sig in cohort.tile_signal.items()}
    s = pd.Series(frac)
    z = pat.loc[[sid.split("-")[0] for sid in s.index], "z_slide"].to_numpy()
    assert np.corrcoef(s.to_numpy(), z)[0, 1] > 0.5
    assert 0.02 < s.mean() < 0.08


def test_deterministic(cohort):
    again = make_cohort(300, seed=11)
    pd.testing.assert_frame_equal(again.labels, cohort.labels)
    pd.testing.assert_frame_equal(again.omics, cohort.omics)
    k = next(iter(cohort.bags))
    assert np.array_equal(again.bags[k], cohort.bags[k])
    other = make_cohort(300, seed=12)
    assert not other.patients.risk.equals(cohort.patients.risk)


def test_save_and_anndata(cohort, tmp_path):
    files = cohort.save(tmp_path)
    lab = pd.read_csv(files["labels"], keep_default_na=False)
    assert len(lab) == len(cohort.labels)
    groups = pd.read_csv(files["gene_groups"])
    assert set(groups.columns) == {"group", "gene"}
    adata = cohort.omics_anndata()
    assert adata.n_obs == len(cohort.omics)
    assert set(adata.layers) == {"rnaseq", "cnv", "mut"}
    assert (adata.var["group"] != "").any()
    if "omics_h5ad" in files:
        import anndata as ad

        back = ad.read_h5ad(files["omics_h5ad"])
        assert back.shape == adata.shape


def test_slide_files(tmp_path):
    c = make_cohort(5, seed=2, slides="files", slide_dir=tmp_path, slide_size=(1024, 768),
                    p_no_slide=0.0)  # fmt: skip
    assert len(c.slide_paths) >= 5
    assert all(p.exists() for p in c.slide_paths.values())


def test_bad_parameters():
    with pytest.raises(ConfigError):
        make_cohort(2)
    with pytest.raises(ConfigError, match="slide_dir"):
        make_cohort(10, slides="files")
