"""Every example runs offline on synthetic data."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(path), "--out", str(tmp_path)])
    runpy.run_path(str(path), run_name="__main__")
    assert any(tmp_path.iterdir()), "the example wrote nothing"
