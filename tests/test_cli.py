"""``xm`` as a client of a running server, over the Unix socket and TCP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


def xm(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "xend_ext.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("via", ["unix", "tcp"])
def test_info(server, via):
    url = server.sock if via == "unix" else server.url
    result = xm("--url", url, "info")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["nr_cpus                "].strip() == "8"
    assert lines["free_cpus              "].strip() == "0"  # every pCPU is in Pool-0 at boot, as in xend
    assert lines["total_memory           "].strip() == "16384"


def test_url_from_environment_and_conf(server, tmp_path):
    assert xm("info", env_extra={"XM_URL": server.url}).returncode == 0
    conf = tmp_path / "xm.conf"
    conf.write_text(f"url = {server.sock}\nuser = root\n")
    assert xm("info", env_extra={"XM_CONF": str(conf)}).returncode == 0


def test_unreachable_server_is_explained(tmp_path):
    result = xm("--url", str(tmp_path / "nothing.sock"), "info")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach the server")
    assert "xend-ext serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_password_is_explained(make_server, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", "admin", "--role", "pool-admin", "--state-dir",
                    str(state), "--password-stdin"], input="pw\n", text=True, check=True, capture_output=True)
    server = make_server("--auth", "file", state_dir=state)
    result = xm("--url", server.url, "-u", "admin", "-p", "wrong", "info")
    assert result.returncode == 1 and "password was refused" in result.stderr
    assert xm("--url", server.url, "-u", "admin", "-p", "pw", "info").returncode == 0


def test_every_command_has_help():
    result = xm("--help")
    assert result.returncode == 0
    commands = ["info", "list", "new", "create", "start", "shutdown", "destroy", "delete", "reboot", "pause",
                "unpause", "suspend", "resume", "save", "restore", "migrate", "sched-credit", "vcpu-pin",
                "vcpu-list", "event-monitor"]
    for name in commands:
        assert f"    {name} " in result.stdout, name
        own = xm(name, "--help")
        assert own.returncode == 0 and own.stdout.startswith(f"usage: xm {name}"), own.stderr
