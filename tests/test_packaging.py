"""Packaging: the package list matches the folders, and a built wheel installs a working
``wsimm`` command without a bare ``cli`` package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_list_matches_folders():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "wsimm").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    on_disk.add("wsimm_cli")
    assert listed == on_disk


def test_entry_point_targets_namespaced_cli():
    assert _pyproject()["project"]["scripts"]["wsimm"] == "wsimm_cli.main:app"


def test_installed_command_runs():
    out = subprocess.run(["wsimm", "--version"], capture_output=True, text=True, check=True)
    import wsimm

    assert out.stdout.strip() == f"wsimm {wsimm.__version__}"


def test_wheel_installs_working_command(tmp_path: Path):
    """A non-editable install from a wheel gives a working command and ships no `cli`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("wsimm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "wsimm_cli" in tops and "wsimm" in tops
    assert "cli" not in tops and "tests" not in tops
    # the viewer's page ships with the package (no files fetched at run time)
    assert {f"wsimm/view/static/{n}" for n in ("index.html", "viewer.js", "viewer.css")} <= set(
        names
    )
    # install the wheel alone into a folder and run its command with this interpreter (its
    # dependencies are here): works the same from a virtual env, a conda env or a bare Python,
    # where a venv with system site packages would see the base interpreter's packages only
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
         "--target", str(target), str(wheel)],
        check=True,
    )  # fmt: skip
    script = target / "bin" / "wsimm"
    assert script.is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, str(script), "--version"], capture_output=True, text=True, check=True,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.stdout.startswith("wsimm ")
    # the command's wsimm must come from the wheel, not the checkout
    where = subprocess.run(
        [sys.executable, "-c", "import wsimm, wsimm_cli as c; print(wsimm.__file__, c.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert where.stdout.count(str(target)) == 2, where.stdout
