"""``xm`` for allocation changes and the policy manager: mem-set, mem-max, vcpu-set (and virsh's names
setmem, setmaxmem, setvcpus), cpu-occupy and cpu-policy, with --dynamic, --static and --perm.

xm runs in this process (``main(argv)``, the function the ``xm`` script calls) against a real server,
so that the many small commands stay fast; one test runs the real ``xm`` process. The VMs are set up
and checked through the official client: what is checked is xm's output, its exit code, and the
server's state after the command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from conftest import ROOT, ServerProcess
from vmkit import (
    BOTH,
    MIB,
    NO_MEMORY_MAX_LIVE,
    NO_SCHED,
    NO_SDOM,
    NO_UTILISATION,
    Kit,
    backend_domain,
    lacks,
    metrics,
    on_sim,
    sim_only,
)

from xend_ext import sxp
from xend_ext.cli.main import main

pytestmark = pytest.mark.backends(*BOTH)

ALLOC = ["mem-set", "setmem", "mem-max", "setmaxmem", "vcpu-set", "setvcpus"]
#: a command line of each allocation command changing the test VM (128 of 256 MiB, 1 of 2 vCPUs)
CHANGE = {"mem-set": "200", "setmem": "200", "mem-max": "300", "setmaxmem": "300", "vcpu-set": "2", "setvcpus": "2"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    """One server for the module; its pool P67 has pCPUs 6 and 7 (the other tests keep off them)."""
    server = ServerProcess(tmp_path_factory.mktemp("xm-alloc") / "state", unix=False, host=backend).start()
    k = Kit(server)
    cpus = {int(k.x.host_cpu.get_number(ref)): ref for ref in k.x.host_cpu.get_all()}
    pool0 = k.x.cpu_pool.get_by_name_label("Pool-0")[0]
    for n in (6, 7):
        k.x.cpu_pool.remove_host_CPU_live(pool0, cpus[n])
    k.x.cpu_pool.activate(k.x.cpu_pool.create({"name_label": "P67", "ncpu": "2", "proposed_CPUs": ["6", "7"]}))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch):
    for key in list(os.environ):
        if key.startswith("XM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XM_CONF", "/nonexistent/xm.conf")


class AllocKit(Kit):
    def __init__(self, server) -> None:
        super().__init__(server)
        self.cpu = {int(self.x.host_cpu.get_number(ref)): ref for ref in self.x.host_cpu.get_all()}
        self.n = 0

    def domain(self, state: str = "halted", **fields) -> tuple[str, str]:
        """(name, ref) of a VM with 128 of 256 MiB and 1 of 2 vCPUs, halted or running."""
        self.n += 1
        name = f"xa{os.getpid() % 1000}-{len(self.made)}-{self.n}"
        record = {"memory_target": 128 * MIB, "memory_static_max": 256 * MIB, "VCPUs_at_startup": 1, "VCPUs_max": 2,
                  **fields}
        ref = self.vm(name, **record)
        if state in ("running", "paused"):
            self.x.VM.start(ref, state == "paused", False)
        return name, ref

    def close(self) -> None:
        for ref in self.cpu.values():
            try:
                self.x.host_cpu.clear_occupants(ref)
            except Exception:  # noqa: BLE001
                pass
        super().close()


@pytest.fixture
def k(srv):
    kit = AllocKit(srv)
    yield kit
    kit.close()


@dataclass
class Run:
    code: int
    out: str
    err: str


def xm(server, *args: str) -> Run:
    """``xm --url URL ARGS`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--url", server.url, *args])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return Run(code, out.getvalue(), err.getvalue())


def ok(run: Run) -> str:
    assert run.code == 0, run
    return run.out


def error(run: Run, code: int = 1) -> str:
    assert run.code == code, run
    assert "Traceback" not in run.err
    return run.err.strip()


def state_of(k, ref) -> dict:
    """The stored and the running values each command changes. The running maximum memory is read from
    the simulated host's state file (VM_metrics does not carry it): off the sim there is no "maxmem"."""
    rec = k.x.VM.get_record(ref)
    live = metrics(k.x, ref)
    state = {"memory": (rec["memory_target"], live["memory_actual"]),
             "vcpus": (rec["VCPUs_at_startup"], live["VCPUs_number"])}
    if on_sim(k.server):
        domain = backend_domain(k.server, rec["uuid"])
        state["maxmem"] = (rec["memory_static_max"], domain["maxmem"] if domain else None)
    else:  # the stored side only; the running side compares equal to anything (it cannot be seen)
        state["maxmem"] = (rec["memory_static_max"], UNSEEN)
    return state


class _Unseen:
    """A value no Xen-API field shows off the sim (the running maximum memory)."""

    def __eq__(self, other):
        return True

    __hash__ = None

    def __repr__(self):
        return "<not visible>"


UNSEEN = _Unseen()


def refused_here(k, ref, command: str, *args: str) -> bool:
    """On a backend that cannot change a running domain's maximum memory (libvirt: no memory_max_live),
    mem-max and setmaxmem fail when they would change the running domain, saying so, and change
    nothing (True: nothing else to check). Static changes, and perm on a halted domain, still work."""
    if KEY[command] != "maxmem" or not lacks(k.server, "memory_max_live"):
        return False
    running = k.x.VM.get_power_state(ref) in ("Running", "Paused")
    flags = [a[2:] for a in args if a in ("--dynamic", "--static", "--perm")]
    mode = flags[0] if flags else ("dynamic" if running else "static")  # xm's default follows the state
    if not (mode == "dynamic" or (mode == "perm" and running)):
        return False
    before = (k.x.VM.get_record(ref), metrics(k.x, ref))
    assert error(xm(k.server, command, *args)).splitlines()[-1] == (
        "Error: this server's backend cannot do that (memory_max_live is missing)")
    assert (k.x.VM.get_record(ref), metrics(k.x, ref)) == before
    return True


def mib(n: int) -> str:
    return str(n * MIB)


# -- mem-set, mem-max, vcpu-set and their aliases, in each mode ------------------------------------------

KEY = {"mem-set": "memory", "setmem": "memory", "mem-max": "maxmem", "setmaxmem": "maxmem", "vcpu-set": "vcpus",
       "setvcpus": "vcpus"}
X = {"memory": mib(128), "maxmem": mib(256), "vcpus": "1"}
Y = {"memory": mib(200), "maxmem": mib(300), "vcpus": "2"}


@pytest.mark.parametrize("flag, stored, running", [
    ((), "x", "y"), (("--dynamic",), "x", "y"), (("--static",), "y", "x"), (("--perm",), "y", "y")],
    ids=["default", "dynamic", "static", "perm"])
@pytest.mark.parametrize("command", ALLOC)
def test_a_change_of_a_running_domain_in_each_mode(k, command, flag, stored, running):
    name, ref = k.domain("running")
    if refused_here(k, ref, command, name, CHANGE[command], *flag):
        return
    run = xm(k.server, command, name, CHANGE[command], *flag)
    assert (run.code, run.out, run.err) == (0, "", "")
    key = KEY[command]
    want = {"x": X[key], "y": Y[key]}
    state = state_of(k, ref)
    assert state[key] == (want[stored], want[running])
    for other in set(state) - {key}:
        assert state[other] == (X[other], X[other])


@pytest.mark.parametrize("command", ALLOC)
def test_a_halted_domain_gets_a_static_change_by_default_with_a_note(k, command):
    name, ref = k.domain()
    if refused_here(k, ref, command, name, CHANGE[command]):
        return
    run = xm(k.server, command, name, CHANGE[command])
    assert run.code == 0 and run.out == ""
    assert run.err == f"Domain '{name}' is halted: the change is stored for its next start (--static).\n"
    key = KEY[command]
    assert state_of(k, ref)[key] == (Y[key], None if key == "maxmem" else ("0"))
    k.x.VM.start(ref, False, False)
    assert state_of(k, ref)[key] == (Y[key], Y[key])


@pytest.mark.parametrize("command", ALLOC)
def test_perm_on_a_halted_domain_changes_what_it_starts_with_without_a_note(k, command):
    name, ref = k.domain()
    if refused_here(k, ref, command, name, CHANGE[command], "--perm"):
        return
    run = xm(k.server, command, name, CHANGE[command], "--perm")
    assert (run.code, run.out, run.err) == (0, "", "")
    assert state_of(k, ref)[KEY[command]][0] == Y[KEY[command]]


@pytest.mark.parametrize("command", ALLOC)
@pytest.mark.parametrize("state", ["halted", "suspended"])
def test_dynamic_on_a_domain_that_does_not_run_is_an_error(k, command, state):
    name, ref = k.domain("running" if state == "suspended" else "halted")
    if state == "suspended":
        k.x.VM.suspend(ref)
    if refused_here(k, ref, command, name, CHANGE[command], "--dynamic"):
        return
    before = k.x.VM.get_record(ref)
    assert error(xm(k.server, command, name, CHANGE[command], "--dynamic")) == (
        f"Error: Domain '{name}' is {state}; it must be running for that. A --dynamic change needs a running "
        f"domain; use --static to change its stored definition for the next start, or start it first with "
        f"'xm start {name}'.")
    assert k.x.VM.get_record(ref) == before


def test_a_paused_domain_gets_a_dynamic_change_by_default(k):
    name, ref = k.domain("paused")
    assert xm(k.server, "mem-set", name, "200").err == ""
    assert state_of(k, ref)["memory"] == (mib(128), mib(200))


def test_a_domain_named_by_uuid_or_domid(k):
    name, ref = k.domain("running")
    ok(xm(k.server, "setmem", k.x.VM.get_uuid(ref), "150"))
    ok(xm(k.server, "vcpu-set", k.x.VM.get_domid(ref), "2", "--perm"))
    assert state_of(k, ref)["memory"] == (mib(128), mib(150))
    assert state_of(k, ref)["vcpus"] == ("2", "2")


def test_list_long_shows_the_stored_and_the_running_values_after_changes(k):
    name, ref = k.domain("running")
    ok(xm(k.server, "mem-set", name, "200"))
    ok(xm(k.server, "vcpu-set", name, "2", "--static"))
    node = sxp.loads(ok(xm(k.server, "list", "-l", name)))
    stored = next(c for c in node[1:] if c[0] == "stored")
    running = next(c for c in node[1:] if c[0] == "running")
    assert sxp.child_value(stored, "memory") == "128" and sxp.child_value(running, "memory") == "200"
    assert sxp.child_value(stored, "vcpus") == "2" and sxp.child_value(running, "vcpus") == "1"


# -- usage ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ALLOC)
def test_usage_errors_exit_2(k, command):
    name, ref = k.domain("running")
    assert "not allowed with argument" in error(xm(k.server, command, name, "2", "--static", "--perm"), 2)
    assert "not a whole number" in error(xm(k.server, command, name, "lots"), 2)
    assert "the following arguments are required" in error(xm(k.server, command, name), 2)
    assert state_of(k, ref) == {key: (X[key], X[key]) for key in state_of(k, ref)}


@pytest.mark.parametrize("command", ALLOC)
def test_an_unknown_domain(k, command):
    assert error(xm(k.server, command, "no-such-domain", "2")) == "Error: Domain 'no-such-domain' does not exist."


@pytest.mark.parametrize("alias, command", [("setmem", "mem-set"), ("setmaxmem", "mem-max"),
                                            ("setvcpus", "vcpu-set")])
def test_the_aliases_say_what_they_stand_for(k, alias, command):
    helped = ok(xm(k.server, alias, "--help"))
    assert f"Alias of 'xm {command}'." in helped
    assert "--dynamic" in helped and "--static" in helped and "--perm" in helped
    listing = ok(xm(k.server, "--help"))
    assert alias in listing and command in listing


def test_the_real_xm_process_with_an_alias(k):
    name, ref = k.domain("running")
    if refused_here(k, ref, "setmaxmem", name, "512", "--perm"):
        return
    env = {key: v for key, v in os.environ.items() if not key.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    done = subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "--url", k.server.url, "setmaxmem", name, "512",
                           "--perm"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert state_of(k, ref)["maxmem"] == (mib(512), mib(512))


# -- error sentences ---------------------------------------------------------------------------------

def test_memory_above_the_maximum(k):
    name, ref = k.domain("running")
    assert error(xm(k.server, "mem-set", name, "300")) == (
        f"Error: domain '{name}' cannot have 300 MiB now: its running maximum is 256 MiB. Raise the maximum first "
        f"with 'xm mem-max {name} 300'")
    assert error(xm(k.server, "setmem", name, "300", "--perm")) == (
        f"Error: domain '{name}' cannot start with 300 MiB: its stored maximum is 256 MiB. Raise it first with "
        f"'xm mem-max {name} 300 --perm'")
    assert error(xm(k.server, "mem-set", name, "300", "--static")) == (
        f"Error: domain '{name}' cannot start with 300 MiB: its stored maximum is 256 MiB. Raise it first with "
        f"'xm mem-max {name} 300 --static'")
    # the advice works (where the backend can raise a running domain's maximum)
    if refused_here(k, ref, "mem-max", name, "300"):
        return
    ok(xm(k.server, "mem-max", name, "300"))
    ok(xm(k.server, "mem-set", name, "300"))
    assert state_of(k, ref)["memory"] == (mib(128), mib(300))


@sim_only(NO_MEMORY_MAX_LIVE + ": mem-max is refused before its bounds are checked")
def test_a_maximum_below_the_memory(k):
    name, ref = k.domain("running")
    assert error(xm(k.server, "mem-max", name, "100")) == (
        f"Error: the maximum of domain '{name}' cannot be 100 MiB: it has 128 MiB now. Lower its memory first with "
        f"'xm mem-set {name} 100'")
    assert error(xm(k.server, "setmaxmem", name, "100", "--static")) == (
        f"Error: the stored maximum of domain '{name}' cannot be 100 MiB: it is to start with 128 MiB. Lower that "
        f"first with 'xm mem-set {name} 100 --static'")
    halted, _ = k.domain()
    assert error(xm(k.server, "mem-max", halted, "64")).endswith(f"'xm mem-set {halted} 64 --static'")
    assert state_of(k, ref)["maxmem"] == (mib(256), mib(256))


def test_nothing_is_not_an_allocation(k):
    name, _ = k.domain("running")
    no_memory = "Error: a domain needs at least 1 MiB of memory, not 0 MiB"
    for mode in ("--dynamic", "--static", "--perm"):
        assert error(xm(k.server, "mem-set", name, "0", mode)) == no_memory
        assert error(xm(k.server, "mem-max", name, "0", mode)) == (
            "Error: this server's backend cannot do that (memory_max_live is missing)"
            if lacks(k.server, "memory_max_live") and mode != "--static" else no_memory)
        assert error(xm(k.server, "vcpu-set", name, "0", mode)) == "Error: a domain needs at least 1 vCPU, not 0"


@pytest.mark.parametrize("mode", ["--dynamic", "--static", "--perm"])
def test_vcpus_above_vcpus_max(k, mode):
    name, ref = k.domain("running")
    assert error(xm(k.server, "setvcpus", name, "3", mode)) == (
        f"Error: domain '{name}' cannot have 3 vCPUs: it has at most 2 (its VCPUs_max, set when it was defined; "
        f"'xm list -l' shows maxvcpus)")
    assert state_of(k, ref)["vcpus"] == ("1", "1")


@pytest.mark.parametrize("mode", ["--dynamic", "--perm"])
def test_memory_the_host_does_not_have_free(k, mode):
    name, ref = k.domain("running", memory_static_max=32768 * MIB)
    text = error(xm(k.server, "mem-set", name, "20480", mode))
    assert text.startswith("Error: the host has too little free memory: 20480 MiB needed, ")
    assert text.endswith("MiB free. Stop or shrink another domain ('xm list' shows what each has), or give this one "
                         "less memory.")
    assert state_of(k, ref)["memory"] == (mib(128), mib(128))


@sim_only(NO_SCHED)
@pytest.mark.parametrize("mode", ["--dynamic", "--static", "--perm"])
def test_weight_and_cap_bounds(k, mode):
    name, ref = k.domain("running")
    assert error(xm(k.server, "sched-credit", "-d", name, "-w", "0", mode)) == (
        "Error: weight cannot be 0: weight is 1..65535")
    assert error(xm(k.server, "sched-credit", "-d", name, "-w", "65536", mode)) == (
        "Error: weight cannot be 65536: weight is 1..65535")
    assert error(xm(k.server, "sched-credit", "-d", name, "-c", "201", mode)) == (
        "Error: cap cannot be 201: cap is 0..200 for 2 vCPUs")
    ok(xm(k.server, "sched-credit", "-d", name, "-w", "65535", "-c", "200", mode))


def test_a_pin_outside_the_pool(k):
    name, ref = k.domain("running", pool_name="P67")
    assert error(xm(k.server, "vcpu-pin", name, "0", "2")) == (
        "Error: cpus cannot be 2: CPU 2 is not in the VM's pool P67; pin it to CPUs of that pool ('xm cpupool-list "
        "-c' shows them)")
    ok(xm(k.server, "vcpu-pin", name, "0", "7"))


# -- cpu-occupy ----------------------------------------------------------------------------------------

def occupants(k, number) -> list[str]:
    return sorted(k.x.host_cpu.get_occupants(k.cpu[number]))


def test_cpu_occupy_reserves_lists_shows_and_clears(k):
    a, a_ref = k.domain("running")
    b, b_ref = k.domain("running", VCPUs_params={"cpumap0": "2-3"})
    c, c_ref = k.domain()
    assert ok(xm(k.server, "cpu-occupy", "2", a, c, a)) == (
        f"pCPU 2 is reserved to {a}, {c}; other domains are kept off it.\n")
    assert occupants(k, 2) == sorted([a_ref, c_ref])
    assert metrics(k.x, b_ref)["VCPUs_CPU"] == {"0": "3"}
    ok(xm(k.server, "cpu-occupy", "4", k.x.VM.get_uuid(b_ref)))  # a uuid names a domain too
    listing = ok(xm(k.server, "cpu-occupy")).splitlines()
    assert listing[0] == "CPU   Occupants"
    assert f"2     {', '.join(sorted([a, c]))}" in listing and f"4     {b}" in listing
    assert ok(xm(k.server, "cpu-occupy", "3")).splitlines() == ["CPU   Occupants", "3     -"]
    assert {"cpu": 2, "occupants": sorted([a, c])} in json.loads(ok(xm(k.server, "cpu-occupy", "--json")))
    assert json.loads(ok(xm(k.server, "cpu-occupy", "3", "--json"))) == [{"cpu": 3, "occupants": []}]
    assert ok(xm(k.server, "cpu-occupy", "2", "--clear")) == "pCPU 2 is free for every domain.\n"
    assert occupants(k, 2) == []
    assert not any(line.split()[0] == "2" for line in ok(xm(k.server, "cpu-occupy")).splitlines())


def test_cpu_occupy_refused_while_a_domain_is_pinned_to_the_pcpu_alone(k):
    a, a_ref = k.domain("running")
    b, b_ref = k.domain("running", VCPUs_params={"cpumap0": "5"})  # a halted one would not count (seed 003)
    assert error(xm(k.server, "cpu-occupy", "5", a)) == (
        f"Error: pCPU 5 cannot be reserved: domain '{b}' could then run only on reserved pCPUs and would have "
        f"nowhere to run. Pin it elsewhere first with 'xm vcpu-pin {b} VCPU CPUS --perm' ('xm cpu-policy {b}' "
        f"shows its pins), then "
        f"reserve the pCPU again")
    assert occupants(k, 5) == []
    ok(xm(k.server, "vcpu-pin", b, "0", "4-5", "--perm"))  # the advice works
    ok(xm(k.server, "cpu-occupy", "5", a))


def test_pinning_and_starting_on_a_pcpu_reserved_to_others(k):
    a, a_ref = k.domain("running")
    b, b_ref = k.domain("running")
    ok(xm(k.server, "cpu-occupy", "1", a))
    assert error(xm(k.server, "vcpu-pin", b, "0", "1")) == (
        "Error: pCPU 1 is reserved to other domains (xm cpu-occupy); pin the vCPU to other pCPUs, or free it first "
        "with 'xm cpu-occupy PCPU --clear' ('xm cpu-occupy' lists the reservations)")
    ok(xm(k.server, "cpu-occupy", "0", a))
    assert error(xm(k.server, "vcpu-pin", b, "all", "0-1", "--static")).startswith(
        "Error: pCPUs 0-1 are reserved to other domains (xm cpu-occupy); pin the vCPU to other pCPUs, or free them")
    c, c_ref = k.domain(VCPUs_params={"cpumap0": "1"})
    assert error(xm(k.server, "start", c)) == (
        f"Error: vCPU 0 of domain '{c}' is pinned to pCPU 1, which is reserved to other domains (xm cpu-occupy). Pin "
        f"it elsewhere with 'xm vcpu-pin {c} 0 CPUS --static', or free the pCPU with 'xm cpu-occupy PCPU --clear' "
        f"('xm cpu-occupy' lists the reservations)")
    assert k.x.VM.get_power_state(c_ref) == "Halted"


def test_cpu_occupy_usage_and_lookups(k):
    a, _ = k.domain()
    assert error(xm(k.server, "cpu-occupy", "9", a)) == (
        "Error: pCPU 9 does not exist; the host has pCPUs 0-7 ('xm info' shows nr_cpus).")
    assert "PCPU must be a pCPU number, not 'first'" in error(xm(k.server, "cpu-occupy", "first", a), 2)
    assert "do not name domains with it" in error(xm(k.server, "cpu-occupy", "1", a, "--clear"), 2)
    assert "--clear needs the pCPU" in error(xm(k.server, "cpu-occupy", "--clear"), 2)
    assert error(xm(k.server, "cpu-occupy", "1", a, "no-such-domain")) == (
        "Error: Domain 'no-such-domain' does not exist.")
    assert occupants(k, 1) == []


# -- cpu-policy --------------------------------------------------------------------------------------

def table(out: str) -> dict[str, list[str]]:
    """cpu-policy's rows by their first cell (two words for 'vcpu N')."""
    rows = {}
    for line in out.splitlines()[2:]:
        if ":" in line:
            key, _, rest = line.partition(":")
            rows[key] = [rest.strip()]
        else:
            cells = line.split()
            if cells[0] == "vcpu":
                rows[f"vcpu {cells[1]}"] = cells[2:]
            else:
                rows[cells[0]] = cells[1:]
    return rows


@sim_only(NO_SCHED + "; " + NO_UTILISATION + " (the Now column)")
def test_cpu_policy_of_a_running_domain(k):
    a, a_ref = k.domain("running", VCPUs_at_startup=2, VCPUs_max=3,
                        VCPUs_params={"weight": "300", "cap": "50", "cpumap0": "1-2"})
    other, _ = k.domain("running")
    ok(xm(k.server, "sched-credit", "-d", a, "-w", "600"))
    ok(xm(k.server, "vcpu-pin", a, "0", "3"))
    ok(xm(k.server, "vcpu-pin", a, "2", "4", "--static"))
    ok(xm(k.server, "cpu-occupy", "3", a))
    ok(xm(k.server, "cpu-occupy", "5", other))
    out = ok(xm(k.server, "cpu-policy", a))
    lines = out.splitlines()
    domid = k.x.VM.get_domid(a_ref)
    assert lines[0] == f"Domain {a} (running, id {domid})"
    assert lines[1].split() == ["Policy", "Stored", "Running", "Now"]
    rows = table(out)
    assert rows["weight"] == ["300", "600"] and rows["cap"] == ["50", "50"]
    assert rows["pool"] == ["Pool-0", "Pool-0"]
    assert rows["vcpu 0"] == ["1-2", "3", "pCPU", "3,", "25%"]  # cap 50: half a pCPU for both vCPUs
    assert rows["vcpu 1"][:2] == ["any", "any"] and rows["vcpu 1"][-1] == "25%"
    assert rows["vcpu 2"] == ["4", "any", "offline"]  # VCPUs_max 3, two online
    assert rows["Occupied pCPUs"] == ["3  (reserved to this domain)"]
    assert rows["Excluded pCPUs"] == ["5  (reserved to other domains, in its pool)"]
    assert rows["Scheduling domain"] == ["none"]


@sim_only(NO_SDOM)
def test_cpu_policy_of_a_halted_domain_and_its_scheduling_domain(k):
    a, a_ref = k.domain(VCPUs_params={"cpumap1": "0"})
    member, member_ref = k.domain()
    sd = k.x.sched_domain.create({"master": a_ref, "members": [member_ref], "name_label": f"sd-{a}"})
    try:
        out = ok(xm(k.server, "cpu-policy", a))
        assert out.splitlines()[0] == f"Domain {a} (halted)"
        rows = table(out)
        assert rows["weight"] == ["256", "-"] and rows["cap"] == ["0", "-"] and rows["pool"] == ["Pool-0", "-"]
        assert rows["vcpu 0"] == ["any", "-"] and rows["vcpu 1"] == ["0", "-"]
        assert rows["Occupied pCPUs"] == ["-  (reserved to this domain)"]
        assert rows["Scheduling domain"] == [f"sd-{a} (master)"]
        member_rows = table(ok(xm(k.server, "cpu-policy", member)))
        assert member_rows["Scheduling domain"] == [f"sd-{a} (member; master {a}: its weight and cap apply)"]
    finally:
        k.x.sched_domain.destroy(sd)


def test_cpu_policy_json(k):
    a, a_ref = k.domain("running", VCPUs_params={"cpumap0": "2"})
    ok(xm(k.server, "cpu-occupy", "2", a))
    data = json.loads(ok(xm(k.server, "cpu-policy", a, "--json")))
    server_side = k.x.VM.get_cpu_policy(a_ref)
    assert data == {"name": a, "uuid": k.x.VM.get_uuid(a_ref), "power_state": "Running", **server_side}
    assert data["occupied_cpus"] == ["2"] and data["stored"]["pins"] == {"0": "2"}
    assert data["running"]["pins"] == {"0": "2"} and data["sched_domain"] == "OpaqueRef:NULL"


def test_cpu_policy_of_an_unknown_domain(k):
    assert error(xm(k.server, "cpu-policy", "no-such-domain")) == "Error: Domain 'no-such-domain' does not exist."
    assert "the following arguments are required" in error(xm(k.server, "cpu-policy"), 2)
