"""The client examples run against a real server and print what they promise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import vmkit
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


# -- the clients in other languages (installed by `make client-deps`, which `make test` runs) ---

GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}  # Debian's golang-*-dev sources
CLIENTS = {
    "node": (["node", "first_session.js"], "examples/clients/node/node_modules/xmlrpc"),
    "perl": (["perl", "first_session.pl"], "/usr/share/perl5/RPC/XML/Client.pm"),
    "go": (["go", "run", "first_session.go"], "/usr/share/gocode/src/github.com/kolo/xmlrpc"),
    "java": (["java", "-cp", "/usr/share/java/axmlrpc.jar", "FirstSession.java"], "/usr/share/java/axmlrpc.jar"),
}


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_language_client(server, language):
    """Each client logs in, makes and activates a pool on pCPU 6, starts a VM in it and a VM group,
    makes a scheduling domain, handles VM_BAD_POWER_STATE and reads the VMs' events; the server's
    state is checked after it, not only what it printed."""
    command, needs = CLIENTS[language]
    assert shutil.which(command[0]) and (ROOT / needs).exists(), \
        f"the {language} client's tools are missing: run `make client-deps` (as root: it installs Debian packages)"
    result = subprocess.run([*command, server.url, "6"], cwd=EXAMPLES / language, capture_output=True, text=True,
                            timeout=120, env={**os.environ, **GO_ENV})
    assert result.returncode == 0, result.stdout + result.stderr
    name = language + "-"
    assert result.stdout.splitlines()[1:] == [
        f"cpu_pool {name}pool: activated true on CPU 6",
        f"VM {name}vm: Running in {name}pool",
        f"VM_group {name}group: started, {name}vm2 Running",
        f"sched_domain {name}sd: master {name}vm, 1 member(s)",
        f"error handled: VM_BAD_POWER_STATE ({name}vm is running, not halted)",
        f"events: add {name}vm Running; add {name}vm2 Running",
    ], result.stdout
    x = vmkit.session(server).xenapi
    (pool,) = x.cpu_pool.get_by_name_label(name + "pool")
    assert x.cpu_pool.get_activated(pool)
    assert [x.host_cpu.get_number(c) for c in x.cpu_pool.get_host_CPUs(pool)] == ["6"]
    (vm,) = x.VM.get_by_name_label(name + "vm")
    (vm2,) = x.VM.get_by_name_label(name + "vm2")
    (group,) = x.VM_group.get_by_name_label(name + "group")
    assert [x.VM.get_power_state(v) for v in (vm, vm2)] == ["Running", "Running"]
    assert x.VM.get_pool_name(vm) == x.VM.get_pool_name(vm2) == name + "pool"
    assert x.VM_group.get_VMs(group) == [vm2]
    (sd,) = x.sched_domain.get_by_name_label(name + "sd")
    assert (x.sched_domain.get_master(sd), x.sched_domain.get_members(sd)) == (vm, [vm2])
    assert x.session.get_all_records_where(f'field "originator"="{language}-example"') == {}  # it logged out
