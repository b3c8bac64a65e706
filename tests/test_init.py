"""The lazy public API: cheap import, names in sync, every name resolves."""

from __future__ import annotations

import subprocess
import sys

import wsimm

HEAVY = ("torch", "torch_geometric", "scanpy", "timm", "openslide", "tiffslide", "zarr", "dask")


def test_import_wsimm_is_light():
    code = (
        "import sys, wsimm; wsimm.__version__; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import wsimm pulled in: {out.stdout.strip()}"


def test_all_matches_lazy_table():
    names = set(wsimm.__all__) - {"__version__"} - set(wsimm._SUBMODULES)
    assert names == set(wsimm._LAZY_IMPORTS)
    assert len(wsimm.__all__) == len(set(wsimm.__all__))


def test_every_lazy_name_resolves():
    for name, module in wsimm._LAZY_IMPORTS.items():
        obj = getattr(wsimm, name)
        assert obj is getattr(__import__(module, fromlist=[name]), name)
    for sub in wsimm._SUBMODULES:
        assert getattr(wsimm, sub).__name__ == f"wsimm.{sub}"


def test_unknown_attribute_raises():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wsimm.nope  # noqa: B018


def test_errors_mix_with_builtins():
    from wsimm import errors

    assert issubclass(errors.SlideNotFoundError, FileNotFoundError)
    assert issubclass(errors.SlideReadError, OSError)
    assert issubclass(errors.UnsupportedSlideError, errors.SlideReadError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.DataError, ValueError)
    for name in errors.__all__:
        if name != "WsimmWarning":
            assert issubclass(getattr(errors, name), errors.WsimmError)
    assert issubclass(errors.WsimmWarning, UserWarning)
