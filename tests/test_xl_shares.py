"""Weights, caps and scheduling domains on real Xen, measured (issue 18; tests/realxen.py).

Each guest burns CPU (the tiny guest with ``burn`` in PV_args). Shares are measured in Xen's own
accounting: the CPU time ``xl vcpu-list`` shows for each domain, over a window of wall time on this
host. The emulated pCPUs are QEMU threads on a shared, busy 2-core host, so a vCPU Xen counts as
running may not have executed much; ratios and caps are what Xen enforces in its own time, which is
what these tests check. Each prints its figures (``pytest -s`` shows them).

A spinning guest keeps its emulated pCPU, one QEMU thread, busy on the host, which slows dom0 and
every xl call: the guests start paused and run only while measured (``run``), and end with the test.

Tolerances, from the runs that set them (README, the xl table): credit2 under emulation gives
weight ratios of 1.4 to 1.8 where 2 is asked (1.0 +- 0.1 for equal weights) and caps undershoot
(0.18 to 0.22 of a pCPU for a cap of 25, 0.04 to 0.065 for 10): a slice or a budget period ends
on a timer the busy host delivers late. On a host loaded far beyond its cores (load average 16
on 2 cores, other emulated machines beside this one) weights flatten towards 1:1, which the
weight test then reports as a failure; `make test` runs this stage alone. xl prints CPU time with
0.1 s resolution: +-0.01 over 12 s.
"""

from __future__ import annotations

import time

import pytest
from conftest import ServerProcess
from hosts import HOSTS
from realxen import (  # noqa: F401 - xen_fixture is the fixture xen
    GUEST_MIB,
    MIB,
    pv_fields,
    xen_fixture,
)
from vmkit import new_vm, session
from xmkit import ok, xm

pytestmark = [pytest.mark.timeout(300), pytest.mark.realxen]

WINDOW = 12.0  # seconds of measurement
SHARE_TOL = 0.03  # of one pCPU, above a cap
CPU = "5"  # the pCPU the competing guests share (dom0 runs on 0 and 1)


@pytest.fixture(scope="module")
def xl_server(xen, tmp_path_factory):
    """One server for the module (on a new state: the host clears the machine first)."""
    server = ServerProcess(tmp_path_factory.mktemp("xl-shares") / "state", host=HOSTS["xl"]).start()
    yield server
    server.stop()


@pytest.fixture
def x(xl_server, xen):
    """The official client; what the test started is destroyed when it ends, passed or not, with
    xl directly (one call per guest; the server sees them go at its next poll)."""
    yield session(xl_server).xenapi
    xen.clean()


def busy_guest(x, name: str, **fields) -> str:
    """A one-vCPU guest that spins (tiny-guest.c's ``burn``)."""
    return new_vm(x, name, memory_target=str(GUEST_MIB * MIB), memory_static_max=str(GUEST_MIB * MIB),
                  VCPUs_at_startup="1", VCPUs_max="1", **{**pv_fields(), "PV_args": "burn"}, **fields)


def cpu_seconds(xen) -> dict[str, float]:
    """Seconds of CPU each domain has run, from ``xl vcpu-list`` (Xen's accounting)."""
    used: dict[str, float] = {}
    for line in xen.out("vcpu-list").splitlines()[1:]:
        f = line.split()
        if len(f) >= 6:
            used[f[0]] = used.get(f[0], 0.0) + float(f[5])
    return used


def measure(xen, names: list[str], seconds: float = WINDOW) -> dict[str, float]:
    """Each domain's share of one pCPU over ``seconds`` of wall time, in Xen's accounting."""
    t0 = time.monotonic()
    before = cpu_seconds(xen)
    t0 = (t0 + time.monotonic()) / 2
    time.sleep(seconds)
    t1 = time.monotonic()
    after = cpu_seconds(xen)
    t1 = (t1 + time.monotonic()) / 2
    return {n: round((after[n] - before[n]) / (t1 - t0), 3) for n in names}


def run(x, *vms: str) -> None:
    """Unpause guests started paused, and give the schedulers a moment."""
    for vm in vms:
        x.VM.unpause(vm)
    time.sleep(2)


SERVER_WINDOW = 10.0 + 5.0 + 2.0  # xl_sdom.WINDOW, the --xl-poll period of hosts.py, a poll's xl calls


def reported(x, vm: str, since: float) -> float:
    """What the server says: the VM's VCPUs_utilisation, summed over its vCPUs, once its window
    (the last 10 s of its samples, the newest up to a poll old) lies wholly after ``since``
    (time.monotonic() of the last change the test made): read sooner, it mixes in the time before."""
    time.sleep(max(0.0, since + SERVER_WINDOW - time.monotonic()))
    return sum(float(u) for u in x.VM_metrics.get_VCPUs_utilisation(x.VM.get_metrics(vm)).values())


def test_sched_credit_weights_and_cap_hold_on_credit2(x, xl_server, xen):
    """`xm sched-credit` on Pool-0 (credit2): two busy guests pinned to one pCPU with weights 512
    and 256 share it about 2:1; then a cap of 25 holds the first at about 25 %."""
    pin = {"cpumap0": CPU}
    a = busy_guest(x, "w-a", VCPUs_params=pin)
    b = busy_guest(x, "w-b", VCPUs_params=pin)
    x.VM.start(a, True, False)
    x.VM.start(b, True, False)
    ok(xm(xl_server, "sched-credit", "-d", "w-a", "-w", "512"))
    assert xen.sched("w-a", "credit2") == (512, 0) and xen.sched("w-b", "credit2") == (256, 0)
    run(x, a, b)
    changed = time.monotonic()
    shares = measure(xen, ["w-a", "w-b"])
    ratio = shares["w-a"] / shares["w-b"]
    print(f"\nweights 512/256 on pCPU {CPU}, {WINDOW:.0f} s: w-a {shares['w-a']:.3f}, w-b {shares['w-b']:.3f}, "
          f"ratio {ratio:.2f} (server: {reported(x, a, changed):.3f}, {reported(x, b, changed):.3f})")
    # 2 asked; under emulation 1.4 to 1.8 with the stage alone on the host, equal weights 1.0 +- 0.1.
    # Each slice ends on a timer the host delivers late, and once slices overrun credit2's 10 ms
    # of credit by far, its credit resets make it round-robin: 1.16 was seen at load average 16.
    assert 1.3 <= ratio <= 2.7
    assert shares["w-a"] + shares["w-b"] == pytest.approx(1.0, abs=0.1)  # the pCPU is busy all the time

    ok(xm(xl_server, "sched-credit", "-d", "w-a", "-c", "25"))
    assert xen.sched("w-a", "credit2") == (512, 25)
    changed = time.monotonic()
    shares = measure(xen, ["w-a", "w-b"])
    print(f"cap 25 on w-a, {WINDOW:.0f} s: w-a {shares['w-a']:.3f}, w-b {shares['w-b']:.3f} "
          f"(server: {reported(x, a, changed):.3f}, {reported(x, b, changed):.3f})")
    assert 0.15 <= shares["w-a"] <= 0.25 + SHARE_TOL  # it was 0.6 before
    assert shares["w-b"] >= 0.6  # work-conserving: the rest goes to w-b
    # the server's figure is the same accounting over its own window (the last 10 s of polls)
    assert 0.15 <= reported(x, a, changed) <= 0.25 + SHARE_TOL


def test_sched_domain_ten_percent_demo(x, xl_server, xen):
    """Seed 001's demo on Xen: cap a busy domain at 10, add a busy member to its scheduling domain:
    both together get the master's 10 %, about half each (the control loop of xl_sdom.py)."""
    master = busy_guest(x, "sd-master", VCPUs_params={"cap": "10"})
    member = busy_guest(x, "sd-member")
    x.VM.start(master, True, False)
    x.VM.start(member, True, False)
    run(x, master, member)
    shares = measure(xen, ["sd-master", "sd-member"], 6)
    print(f"\nbefore: master (cap 10) {shares['sd-master']:.3f}, member (uncapped) {shares['sd-member']:.3f}")
    assert shares["sd-master"] <= 0.10 + SHARE_TOL and shares["sd-member"] >= 0.5
    sd = x.sched_domain.create({"master": master, "members": [member]})
    # the loop has split the master's cap and weight; Xen shows its parts, the server what was asked
    assert xen.sched("sd-master", "credit2") == (128, 5) == xen.sched("sd-member", "credit2")
    assert x.VM_metrics.get_VCPUs_params(x.VM.get_metrics(master))["cap"] == "10"
    changed = time.monotonic()
    shares = measure(xen, ["sd-master", "sd-member"])
    total = shares["sd-master"] + shares["sd-member"]
    print(f"in one scheduling domain, {WINDOW:.0f} s: master {shares['sd-master']:.3f}, "
          f"member {shares['sd-member']:.3f}, together {total:.3f} "
          f"(server: {reported(x, master, changed):.3f}, {reported(x, member, changed):.3f})")
    assert 0.04 <= total <= 0.10 + SHARE_TOL
    assert 0.3 <= shares["sd-master"] / total <= 0.7  # about half each
    assert 0.3 <= reported(x, member, changed) / (reported(x, master, changed) + reported(x, member, changed)) <= 0.7
    # the member leaves: its own (uncapped) parameters come back
    x.sched_domain.remove_member(sd, member)
    assert xen.sched("sd-member", "credit2") == (256, 0) and xen.sched("sd-master", "credit2") == (256, 10)


def test_sched_domain_shares_the_masters_weight(x, xl_server, xen):
    """Weight sharing: a master of weight 512 and its member against an outsider of weight 256, all
    busy on one pCPU. As one entity of weight 512 the pair gets 2/3 (1/3 each) and the outsider 1/3;
    without the scheduling domain it would be 1/2, 1/4 and 1/4."""
    pin = {"cpumap0": CPU}
    master = busy_guest(x, "sw-master", VCPUs_params={**pin, "weight": "512"})
    member = busy_guest(x, "sw-member", VCPUs_params=pin)
    outsider = busy_guest(x, "sw-out", VCPUs_params=pin)
    for vm in (master, member, outsider):
        x.VM.start(vm, True, False)
    x.sched_domain.create({"master": master, "members": [member]})
    assert xen.sched("sw-master", "credit2") == (256, 0) == xen.sched("sw-member", "credit2")
    run(x, master, member, outsider)
    names = ["sw-master", "sw-member", "sw-out"]
    shares = measure(xen, names)
    pair = shares["sw-master"] + shares["sw-member"]
    print(f"\nweight 512 shared on pCPU {CPU}, {WINDOW:.0f} s: master {shares['sw-master']:.3f}, member "
          f"{shares['sw-member']:.3f} (together {pair:.3f}), outsider (256) {shares['sw-out']:.3f}")
    assert 1.5 <= pair / shares["sw-out"] <= 2.5  # 2:1 (3:1 without the scheduling domain)
    assert 0.75 <= shares["sw-master"] / shares["sw-member"] <= 1.33
