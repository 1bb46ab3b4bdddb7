"""The tree passes the linter configured in pyproject.toml (ruff: pycodestyle at 100 columns,
pyflakes, import order, bugbear, pyupgrade, naming)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_passes_ruff():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it comes with the [test] extra")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
