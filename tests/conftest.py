from __future__ import annotations

from pathlib import Path

import pytest

#: real data beside the checkout (../shared/data); tests that need it skip when it is absent
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SLIDES = SHARED / "slides"


def shared_slide(name: str) -> Path:
    p = SLIDES / name
    if not p.exists():
        pytest.skip(f"{p} not available (../shared/data is absent)")
    return p


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic slide with tumour, pen marks and debris (ground truth attached)."""
    from wsimm.testing import write_synthetic_slide

    d = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_slide(
        d / "synthetic.svs",
        width=4096,
        height=3072,
        seed=3,
        mpp=0.5,
        pen_marks=("blue", "green", "red"),
        debris=True,
    )
