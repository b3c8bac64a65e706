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


def test_no_import_cycles_between_modules():
    """Stages import downward only: no two wsimm modules import each other, lazily inside a
    function or not (``from pkg import submodule`` counts as importing the submodule; a
    package's ``__init__`` re-exporting its own modules does not count)."""
    import ast
    from pathlib import Path

    root = Path(wsimm.__file__).parent
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                graph[m] |= subs or ({node.module} & set(mods))
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names} & set(mods)
    cycles = sorted(
        (a, b)
        for a in graph
        for b in graph[a]
        if a < b and a in graph[b]
        and not (mods[a].name == "__init__" and b.startswith(a + "."))
        and not (mods[b].name == "__init__" and a.startswith(b + "."))
    )  # fmt: skip
    assert not cycles, f"modules importing each other: {cycles}"
