"""src/ppo_core type-checks: mypy, configured by ``[tool.mypy]`` in pyproject.toml, finds
no error. mypy comes with the ``test`` extra; without it the test fails rather than skips,
so that a CI job missing it cannot pass unchecked."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error_in_src(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.fail('mypy is missing: install the test extra (pip install ".[test]")')
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--cache-dir", str(tmp_path / "mypy_cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
