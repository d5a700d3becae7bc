"""The client examples run against a real server and print what they promise."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT

EXAMPLES = ROOT / "examples" / "clients"


def test_python_example_tcp_and_unix(server):
    for target in (server.url, server.sock):
        result = subprocess.run([sys.executable, str(EXAMPLES / "first_session.py"), target], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "8 pCPUs, 0 free" in result.stdout
        assert "('host', 'mod')" in result.stdout


def test_curl_example(server):
    assert shutil.which("curl"), "curl is needed by the shell example (the Makefile's test target installs it)"
    result = subprocess.run(["sh", str(EXAMPLES / "first_session.sh"), server.url], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "session: OpaqueRef:" in result.stdout
    assert "free_cpus: 0" in result.stdout
