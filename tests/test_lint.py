"""The code stays ruff-clean (the conventions of DESIGN.md), checked like any other behaviour."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "xend_ext", "xenapi_classes", "tests",
                             "bench", "examples"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
