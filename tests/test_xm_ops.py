"""xm as xend users know it (issue 19): closed pipes, --version, the smaller xend commands, --json,
generated completion and man page, defaults that work from any directory."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, ServerProcess
from xmkit import error, ok, xm

from xend_ext.cli import docs

VERSION = importlib.metadata.version("xend-ext")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("xm-ops") / "state").start()
    yield server
    server.stop()


_count = iter(range(10_000))


def new_vm(srv, tmp_path, running: bool = False) -> str:
    name = f"ops{next(_count)}x{os.getpid() % 1000}"
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = 128\nmaxmem = 256\nvcpus = 2\n')
    ok(xm(srv, "create" if running else "new", str(cfg)))
    return name


def env_without_xm() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    return env


# -- closed pipes ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["list"], ["info"], ["sched-credit"], ["vcpu-list"], ["top", "-b", "-n", "1"]])
def test_output_to_a_closed_pipe_ends_quietly(srv, command):
    """``xm list | head -1`` when head has gone: the reader is closed before xm writes a byte, so
    every write fails with EPIPE; xm ends with 141 (SIGPIPE's status) and says nothing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "--url", srv.url, *command],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
                                env=env_without_xm())
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_head_of_a_listing_in_a_shell_pipeline(srv):
    result = subprocess.run(f"{sys.executable} -m xend_ext.cli.main --url {srv.url} list | head -1", shell=True,
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env_without_xm())
    assert result.stdout.startswith("Name") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "Broken" not in result.stderr


# -- small fixes -----------------------------------------------------------------------------

def test_version_of_both_commands():
    assert ok(xm(None, "--version", url="")).strip() == f"xm (xend-ext) {VERSION}"
    server = subprocess.run([sys.executable, "-m", "xend_ext", "--version"], capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert server.returncode == 0 and server.stdout.strip() == f"xend-ext {VERSION}"


def test_migrate_to_a_bare_host_goes_to_port_9363(srv, tmp_path):
    name = new_vm(srv, tmp_path, running=True)
    result = xm(srv, "migrate", name, "127.0.0.1")
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:9363" in result.stdout + result.stderr  # migrated there, or refused naming it
    if result.returncode == 0:
        return
    assert "127.0.0.1:80" not in result.stderr
    ok(xm(srv, "destroy", name))


def test_mem_set_error_is_in_mib(srv, tmp_path):
    name = new_vm(srv, tmp_path)
    msg = error(xm(srv, "mem-set", name, "99999"))
    total = json.loads(ok(xm(srv, "info", "--json")))["total_memory"]
    assert "99999 MiB" in msg and f"{total} MiB" in msg, msg
    assert str(99999 << 20) not in msg
    assert "stored for its next start" not in msg


def test_vcpu_pin_note_only_after_success(srv, tmp_path):
    name = new_vm(srv, tmp_path)
    msg = error(xm(srv, "vcpu-pin", name, "0", "9-12"))
    assert "stored for its next start" not in msg and "CPU 12 does not exist" in msg
    result = xm(srv, "vcpu-pin", name, "0", "1")
    ok(result)
    assert "stored for its next start (--static)" in result.stderr


# -- the smaller xend commands ---------------------------------------------------------------

def test_domid_domname_rename_uptime(srv, tmp_path):
    name = new_vm(srv, tmp_path, running=True)
    domid = ok(xm(srv, "domid", name)).strip()
    assert domid.isdigit() and int(domid) > 0
    assert ok(xm(srv, "domname", domid)).strip() == name
    ok(xm(srv, "rename", name, name + "r"))
    assert ok(xm(srv, "domname", domid)).strip() == name + "r"
    lines = ok(xm(srv, "uptime", name + "r")).splitlines()
    assert lines[0].split() == ["Name", "ID", "Uptime"]
    assert lines[1].split()[:2] == [name + "r", domid] and lines[1].split()[2].count(":") == 2
    assert ok(xm(srv, "uptime", "-s", name + "r")).startswith(f"{name}r up ")
    (entry,) = json.loads(ok(xm(srv, "uptime", "--json", name + "r")))
    assert entry["domid"] == int(domid) and entry["uptime_seconds"] >= 0
    ok(xm(srv, "destroy", name + "r"))
    assert "has no domain id" in error(xm(srv, "domid", name + "r"))


def test_reset_restarts_at_once(srv, tmp_path):
    name = new_vm(srv, tmp_path, running=True)
    before = json.loads(ok(xm(srv, "list", "--json", name)))[0]
    time.sleep(1.1)  # start times have a one-second resolution on the wire
    ok(xm(srv, "reset", name))
    after = json.loads(ok(xm(srv, "list", "--json", name)))[0]
    assert after["power_state"] == "Running"
    assert after["metrics_record"]["start_time"] != before["metrics_record"]["start_time"]
    ok(xm(srv, "destroy", name))


def test_top_batch_once_and_json(srv, tmp_path):
    name = new_vm(srv, tmp_path, running=True)
    out = ok(xm(srv, "top", "-b", "-n", "1")).splitlines()
    assert out[0].split() == ["NAME", "ID", "STATE", "CPU(%)", "MEM(MiB)", "VCPUS", "UPTIME(s)", "POOL"]
    mine = next(line.split() for line in out if line.split()[:1] == [name])
    assert mine[2] == "r-----" and mine[4] == "128" and mine[5] == "2"
    assert "\x1b" not in "\n".join(out)  # batch mode: no screen control
    rows = json.loads(ok(xm(srv, "top", "--json", "-n", "1", name)))
    assert rows[0]["name"] == name and rows[0]["cpu_percent"] == pytest.approx(float(mine[3]), abs=0.1)
    two = ok(xm(srv, "top", "-b", "-n", "2", "-d", "0.1", name))
    assert two.count("NAME") == 2
    ok(xm(srv, "destroy", name))


def test_shutdown_all_leaves_domain0(srv, tmp_path):
    names = [new_vm(srv, tmp_path, running=True) for _ in range(2)]
    result = xm(srv, "shutdown", "-a", "-w")
    ok(result)
    states = {r["name_label"]: r["power_state"] for r in json.loads(ok(xm(srv, "list", "--json")))}
    assert states["Domain-0"] == "Running"
    assert all(states[n] == "Halted" for n in names)
    assert all(f"Domain '{n}' is halted." in result.stderr for n in names)
    assert error(xm(srv, "shutdown"), 2).endswith("name one domain, or give -a for all of them")


def test_log_dmesg_console_say_what_there_is(srv, tmp_path):
    name = new_vm(srv, tmp_path)
    result = xm(srv, "log")
    ok(result)
    assert "audit log" in result.stderr
    assert "hypervisor's message buffer" in error(xm(srv, "dmesg"))
    assert "does not carry consoles" in error(xm(srv, "console", name))


def test_json_of_info_sched_credit_and_vcpu_list(srv, tmp_path):
    name = new_vm(srv, tmp_path, running=True)
    info = json.loads(ok(xm(srv, "info", "--json")))
    table = dict(line.split(":", 1) for line in ok(xm(srv, "info")).splitlines())
    assert {k.strip(): v.strip() for k, v in table.items()} == {k: str(v) for k, v in info.items()}
    ok(xm(srv, "sched-credit", "-d", name, "-w", "512"))
    (sched,) = json.loads(ok(xm(srv, "sched-credit", "-d", name, "--json")))
    assert sched["weight"] == 512 and sched["cap"] == 0 and sched["name"] == name
    vcpus = json.loads(ok(xm(srv, "vcpu-list", "--json", name)))
    assert [v["vcpu"] for v in vcpus] == [0, 1] and all(v["name"] == name for v in vcpus)
    ok(xm(srv, "destroy", name))


# -- completion and man page -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(docs.FILES))
def test_completion_and_man_page_are_current(name):
    """contrib/ holds what ``python -m xend_ext.cli.docs contrib/`` writes from the commands."""
    assert (ROOT / "contrib" / name).read_text(encoding="utf-8") == docs.FILES[name](), \
        f"contrib/{name} is stale: run python -m xend_ext.cli.docs contrib/"


def test_bash_completion_completes_commands_and_flags():
    script = (f"source {ROOT / 'contrib' / 'xm.bash'}; COMP_WORDS=(xm vcpu-); COMP_CWORD=1; _xm; "
              'echo "${COMPREPLY[*]}"; COMP_WORDS=(xm top --b); COMP_CWORD=2; _xm; echo "${COMPREPLY[*]}"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out == ["vcpu-list vcpu-pin vcpu-set", "--batch"]


def test_man_page_names_every_command():
    page = docs.man()
    for name, *_ in docs.commands():
        assert f"\\fB{name.replace('-', chr(92) + '-')}\\fR" in page


# -- defaults that work from any directory ---------------------------------------------------

def test_server_and_xm_meet_from_different_directories(tmp_path):
    """With $XEND_EXT_STATE, the server started in one directory and xm run in another agree."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = dict(env_without_xm(), XEND_EXT_STATE=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "xend_ext", "serve", "--listen", "none"], env=env,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path / "a")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on unix socket" in line:
                break
        result = subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "info"], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path / "b", env=env)
        assert result.returncode == 0, result.stderr
        assert "nr_cpus" in result.stdout
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_default_url_is_the_system_socket_for_root(tmp_path):
    if os.geteuid() != 0:
        expected = os.path.join(os.environ.get("XDG_RUNTIME_DIR", ""), "xend-ext", "xen-api.sock")
    else:
        expected = "/run/xend-ext/xen-api.sock"
    env = {k: v for k, v in env_without_xm().items() if k != "XEND_EXT_STATE"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "info"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=env)
    if result.returncode == 0:  # a server runs there on this machine
        return
    assert expected in result.stderr, result.stderr
