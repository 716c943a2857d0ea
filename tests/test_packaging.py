"""Build a wheel from this tree, install it into a fresh venv, and use it from there.

This catches what in-tree tests cannot: a compiled core or a data file (the bundled
default configuration) missing from the wheel, a broken console-script entry point, an
undeclared runtime dependency.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Build outputs and local state never belong in the copy the wheel is built from.
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "__pycache__", "*.egg-info",
                                "*.so", ".pytest_cache", "*.html")


def clean_env() -> dict:
    """A release build, run without the ASan preload or this tree on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PYTHONPATH", "PYTHONMALLOC", "ASAN_OPTIONS", "LSAN_OPTIONS",
                        "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith("FASTPROXY_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=clean_env(), **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out]
    # Reuse this environment's Cython/setuptools when it has them (make test's venv does):
    # faster, and no build environment to fetch.
    if importlib.util.find_spec("Cython") and importlib.util.find_spec("setuptools"):
        cmd.append("--no-build-isolation")
    run(cmd + [src], cwd=tmp, timeout=540)
    wheels = list(out.glob("fastproxy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastproxy/_core.") and n.endswith(".so") for n in names), names
    for needed in ("fastproxy/__init__.py", "fastproxy/cli.py", "fastproxy/admin.py",
                   "fastproxy/__main__.py", "fastproxy/data/default.yaml", "fastproxy/config/__init__.py"):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fastproxy = fastproxy.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", wheel], timeout=300)

    # Run from an unrelated directory so nothing of the source tree can be imported.
    r = run([py, "-c", "import fastproxy, fastproxy._core, os; print(fastproxy.__version__); "
                       "print(os.path.dirname(fastproxy.__file__))"], cwd=tmp_path, timeout=60)
    version, pkgdir = r.stdout.split()
    assert pathlib.Path(pkgdir).is_relative_to(venv), pkgdir

    default = pathlib.Path(pkgdir) / "data" / "default.yaml"
    r = run([venv / "bin" / "fastproxy", "--mode", "validate", "-c", default], cwd=tmp_path, timeout=60)
    assert r.stdout.strip() == f"configuration '{default}' OK"

    r = run([venv / "bin" / "fastproxy", "--version"], cwd=tmp_path, timeout=60)
    assert r.stdout.strip() == f"fastproxy version: {version}"
