"""Every real slide in ../shared/data/slides, with each backend that supports it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_slide
from wsimm.errors import UnsupportedSlideError
from wsimm.slide import open_slide

# name, backend, (width, height), level count, mpp (None = unknown), vendor, associated
KNOWN = [
    ("CMU-1-Small-Region.svs", "openslide", (2220, 2967), 1, 0.499, "aperio",
     {"label", "macro", "thumbnail"}),
    ("CMU-1-Small-Region.svs", "tiffslide", (2220, 2967), 1, 0.499, "aperio",
     {"label", "macro", "thumbnail"}),
    ("hamamatsu-test3-DAPI-2-387.ndpi", "openslide", (3968, 4864), 7, 0.228175, "hamamatsu",
     {"macro"}),
    ("hamamatsu-test3-DAPI-2-387.ndpi", "tiffslide", (3968, 4864), 4, 0.228175, "hamamatsu",
     {"macro"}),
    ("kidney-48-5.tif", "tiffslide", (1493, 901), 1, None, "generic-tiff", set()),
    ("synthetic/boxes.tiff", "openslide", (300, 250), 4, None, "generic-tiff", set()),
    ("synthetic/boxes.tiff", "tiffslide", (300, 250), 4, None, "generic-tiff", set()),
    ("synthetic/small.svs", "openslide", (16, 16), 1, 0.499, "aperio", {"thumbnail"}),
    ("synthetic/small.svs", "tiffslide", (16, 16), 1, 0.499, "aperio", {"thumbnail"}),
    ("synthetic/openslide-boxes-dicom", "openslide", (16, 16), 1, 0.499, "dicom",
     {"thumbnail"}),
    ("synthetic/highdicom_sm_image.dcm", "openslide", (50, 50), 1, 0.499, "dicom", set()),
]  # fmt: skip


@pytest.mark.parametrize(("name", "backend", "dims", "levels", "mpp", "vendor", "assoc"), KNOWN)
def test_known_metadata(name, backend, dims, levels, mpp, vendor, assoc):
    path = shared_slide(name)
    with open_slide(path, backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == dims
        assert s.level_count == levels
        assert s.vendor == vendor
        assert assoc <= set(s.associated_image_names)
        if mpp is None:
            assert s.mpp is None and s.mpp_source is None
        else:
            assert s.mpp == pytest.approx(mpp, rel=1e-4)
            assert s.mpp_source
        # pixels come back as RGB uint8 of the requested size, at every level
        for level in range(s.level_count):
            w, h = (min(64, v) for v in s.level_dimensions[level])
            region = s.read_region((0, 0), level, (w, h))
            assert region.shape == (h, w, 3) and region.dtype == np.uint8
        for a in s.associated_image_names:
            img = s.associated_image(a)
            assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


def test_mpp_sources_name_the_metadata_key():
    with open_slide(shared_slide("CMU-1-Small-Region.svs")) as s:
        assert s.mpp_source == "aperio.MPP"
    with open_slide(shared_slide("hamamatsu-test3-DAPI-2-387.ndpi")) as s:
        assert s.mpp_source == "tiff.XResolution"


def test_screen_dpi_mpp_is_ignored_with_a_note():
    with open_slide(shared_slide("synthetic/boxes.tiff")) as s:
        assert s.mpp is None
        assert "352.8" in s.info().mpp_note
        with pytest.raises(Exception, match="--slide-mpp"):
            s.require_mpp()


def test_auto_backend_falls_back_to_tiffslide():
    with open_slide(shared_slide("kidney-48-5.tif")) as s:
        assert s.backend == "tiffslide"
    with pytest.raises(UnsupportedSlideError, match="openslide does not recognise"):
        open_slide(shared_slide("kidney-48-5.tif"), backend="openslide")


def test_dicom_only_through_openslide():
    path = shared_slide("synthetic/openslide-boxes-dicom")
    with open_slide(path) as s:
        assert s.backend == "openslide"
    with pytest.raises(UnsupportedSlideError):
        open_slide(path, backend="tiffslide")


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_4d_ome_tiff_rejected_clearly(backend):
    path = shared_slide("synthetic/4D-series.ome.tiff")
    with pytest.raises(UnsupportedSlideError) as ei:
        open_slide(path, backend=backend)
    msg = str(ei.value)
    assert "4D-series.ome.tiff" in msg and "\n" not in msg
    if backend != "openslide":
        assert "4 dimensions" in msg


def test_openslide_tiffslide_parity_cmu():
    path = shared_slide("CMU-1-Small-Region.svs")
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        for loc, size in [
            ((0, 0), (2220, 2967)),
            ((517, 733), (256, 256)),
            ((2100, 2900), (256, 256)),
        ]:
            x = a.read_region(loc, 0, size).astype(np.float64)
            y = b.read_region(loc, 0, size).astype(np.float64)
            assert np.abs(x - y).mean() < 1.0
        ta, tb = a.get_thumbnail((256, 256)), b.get_thumbnail((256, 256))
        assert ta.shape == tb.shape
        assert np.abs(ta.astype(float) - tb.astype(float)).mean() < 1.0


def test_ndpi_levels_agree_where_both_backends_have_them():
    path = shared_slide("hamamatsu-test3-DAPI-2-387.ndpi")
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        for level in range(b.level_count):
            assert a.level_dimensions[level] == b.level_dimensions[level]
            x = a.read_region((1000, 1200), level, (128, 128)).astype(float)
            y = b.read_region((1000, 1200), level, (128, 128)).astype(float)
            assert np.abs(x - y).mean() < 1.0
