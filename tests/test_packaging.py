"""The package installs as a user gets it: from the sdist, to a wheel, to a machine
without a compiler.

One chain, as a release would run it: ``python -m build --sdist`` on this checkout;
every source file the build needs must be in the archive; ``pip wheel .`` inside the
unpacked sdist (so the sdist alone is enough to build); then the wheel goes into a new
venv whose PATH holds no compiler, CMake or ninja, and ``ppo-core verify`` must pass
there. Builds run without build isolation (the ``test`` extra brings scikit-build-core,
pybind11, cmake and ninja), so the test needs no network beyond what installed them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What a build from the sdist needs, and what the wheel must ship.
BUILD_FILES = ("pyproject.toml", "CMakeLists.txt", "README.md", "LICENSE")
BUILD_DIRS = ("csrc", "spec", "src")
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "clang++", "cmake", "ninja")


def _run(cmd, cwd=None, env=None, timeout=900):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def _source_files():
    """The checkout's files under csrc/, spec/ and src/ (tracked files when this is a
    git checkout, else every file but caches and build products)."""
    try:
        out = subprocess.run(["git", "ls-files", *BUILD_DIRS], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for d in BUILD_DIRS for p in (ROOT / d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")]
    return sorted(out)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    for tool in ("build", "scikit_build_core", "pybind11"):
        try:
            __import__(tool)
        except ImportError:
            pytest.fail(f"{tool} is missing: install the test extra (pip install \".[test]\")")
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT])
    (archive,) = out.glob("ppo_core-*.tar.gz")
    return archive


def test_the_sdist_carries_every_file_the_build_needs(sdist):
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    members = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
    needed = list(BUILD_FILES) + _source_files()
    assert any(f.startswith("csrc/") and f.endswith(".cpp") for f in needed)
    assert "src/ppo_core/_core.pyi" in needed and "src/ppo_core/py.typed" in needed
    missing = [f for f in needed if f not in members]
    assert not missing, f"the sdist lacks {missing}"
    assert not any(m.startswith("models/") for m in members), "the sdist carries the trained model"


def test_a_wheel_built_from_the_sdist_installs_and_verifies_without_a_compiler(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path / "src", filter="data")
        else:  # Python < 3.11.4: no extraction filters
            tar.extractall(tmp_path / "src")
    (tree,) = (tmp_path / "src").iterdir()
    wheels = tmp_path / "wheels"
    # `pip wheel .` in the unpacked sdist: nothing from this checkout is at hand.
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--wheel-dir", wheels], cwd=tree)
    (wheel,) = wheels.glob("ppo_core-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
    for needed in ("ppo_core/_core.pyi", "ppo_core/py.typed", "ppo_core_spec/__init__.py",
                   "ppo_core/verify.py"):
        assert needed in files, f"the wheel lacks {needed}"
    assert any(f.startswith("ppo_core/_core.") and f.endswith((".so", ".pyd")) for f in files)

    # A new venv whose PATH has no compiler: pip may only install binaries.
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    bindir = fresh / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=str(bindir), CC="/nonexistent/cc", CXX="/nonexistent/c++")
    found = {c: shutil.which(c, path=env["PATH"]) for c in COMPILERS}
    assert not any(found.values()), f"the fresh venv's PATH still has {found}"
    _run([bindir / "python", "-m", "pip", "install", "--only-binary", ":all:",
          f"{wheel}[verify]"], cwd=tmp_path, env=env)
    proc = _run([bindir / "ppo-core", "verify", "--examples", "25", "--seed", "0"],
                cwd=tmp_path, env=env)
    assert "0 failed" in proc.stdout, proc.stdout
    # The installed package is the wheel's, not this checkout's.
    where = _run([bindir / "python", "-c", "import ppo_core, ppo_core._core as c; print(c.__file__)"],
                 cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(fresh), where
