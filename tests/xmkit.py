"""Running the real ``xm`` against a test server, shared by the xm test modules."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def xm(server, *args, cwd=None, url=None, timeout=60) -> subprocess.CompletedProcess:
    """``xm --url <server> ARGS`` as a subprocess, with no XM_* settings of the machine leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    target = url if url is not None else server.url
    return subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "--url", target, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT, env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a command that must succeed, with no traceback."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The stderr of a command that must fail cleanly with ``code``."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()
