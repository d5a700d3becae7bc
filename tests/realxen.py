"""The real-Xen test stage: one emulated Xen machine per pytest session, and a host-side ``xl``.

``scripts/realxen/`` installs the packages (when missing), builds dom0 and the tiny PV guest into
/var/cache/xend-ext-realxen (reused across runs) and boots Xen 4.17 + a Linux dom0 under QEMU.
The first test that needs it boots it (about 15 s); it is powered off when the session ends. A
machine that cannot boot is a test FAILURE, never a skip: the stage exists to prove the xl backend
on real Xen.

Test modules import the fixtures ``xen`` and ``clean_xen`` (named apart from their functions, so
that importing them does not shadow the test arguments):
``from realxen import clean_xen_fixture, xen_fixture  # noqa: F401``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "realxen"
CACHE = Path(os.environ.get("XEND_REALXEN_CACHE", "/var/cache/xend-ext-realxen"))
# The guest: our own PV kernel (scripts/realxen/tiny-guest.c), created in about 0.7 s, which answers
# Xen's requests as a guest with PV drivers does (a Linux guest costs ~8 s per create here).
TINY_KERNEL = str(CACHE / "machine" / "tiny-guest")
GUEST_MIB = 128
NCPUS = 8  # the emulated machine's pCPUs (dom0 has 2 vCPUs), as the shared suite's hosts
MIB = 1 << 20


def _machine_module():
    spec = importlib.util.spec_from_file_location("realxen_machine", SCRIPTS / "machine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["realxen_machine"] = module
    spec.loader.exec_module(module)
    return module


class Xen:
    """The running machine: ``run("list")`` runs the shim's xl and returns the completed process."""

    def __init__(self, machine) -> None:
        self.machine = machine
        self.xl = str(machine.xl)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.xl, *args], capture_output=True, text=True, timeout=timeout)

    def out(self, *args: str) -> str:
        """xl's stdout; the command must succeed without a libxl error."""
        done = self.run(*args)
        assert done.returncode == 0 and "error" not in done.stderr, f"xl {args}: {done.stderr}"
        return done.stdout

    # -- xl's own view, parsed for assertions ----------------------------------------------
    def domains(self) -> dict[str, dict]:
        """{name: {domid, mem, vcpus, state, uuid, pool}} from ``xl list -v -c``."""
        rows = {}
        for line in self.out("list", "-v", "-c").splitlines()[1:]:
            f = line.split()
            if len(f) >= 10:
                rows[f[0]] = {"domid": int(f[1]), "mem": int(f[2]), "vcpus": int(f[3]), "state": f[4],
                              "uuid": f[6], "pool": f[-1]}
        return rows

    def pools(self) -> dict[str, dict]:
        """{name: {sched, cpus}} from ``xl cpupool-list`` and ``xl cpupool-list -c``."""
        scheds = {f[0]: f[2] for f in (line.split() for line in self.out("cpupool-list").splitlines()[1:]) if f}
        pools = {}
        for line in self.out("cpupool-list", "-c").splitlines()[1:]:
            f = line.split()
            if f:
                pools[f[0]] = {"sched": scheds[f[0]], "cpus": _cpus(f[1]) if len(f) > 1 else set()}
        return pools

    def vcpus(self, domain: str) -> list[dict]:
        """[{vcpu, cpu, hard}] from ``xl vcpu-list DOMAIN``."""
        rows = []
        for line in self.out("vcpu-list", domain).splitlines()[1:]:
            m = re.match(r"^\S+\s+\d+\s+(\d+)\s+(\d+|-)\s+\S+\s+[\d.]+\s+(\S+)\s*/", line)
            if m:
                rows.append({"vcpu": int(m[1]), "cpu": m[2], "hard": m[3]})
        return rows

    def sched(self, domain: str, scheduler: str = "credit") -> tuple[int, int]:
        """(weight, cap) from ``xl sched-credit -d DOMAIN`` (or sched-credit2)."""
        line = self.out(f"sched-{scheduler}", "-d", domain).splitlines()[-1].split()
        return int(line[-2]), int(line[-1])

    def clean(self) -> None:
        """Back to a freshly booted host: only Domain-0, every pCPU in Pool-0. Two xl calls when
        there is nothing to undo (each costs ~0.4 s)."""
        acted = False
        for name in self.domains():
            if name != "Domain-0":
                self.run("destroy", name)
                acted = True
        pools = {f[0]: _cpus(f[1]) if len(f) > 1 else set()
                 for f in (line.split() for line in self.out("cpupool-list", "-c").splitlines()[1:]) if f}
        for name in pools:
            if name != "Pool-0":
                self.run("cpupool-destroy", name)
                acted = True
        missing = set(range(self.machine.cpus)) - pools.get("Pool-0", set())
        if missing:
            self.out("cpupool-cpu-add", "Pool-0", ",".join(str(c) for c in sorted(missing)))
        if acted or missing:
            assert list(self.domains()) == ["Domain-0"] and list(self.pools()) == ["Pool-0"]
        for log in self.machine.consoles.glob("guest-*.log"):  # a new guest of the same name logs anew
            log.unlink()


def pv_fields() -> dict[str, str]:
    """The VM record's boot fields of a guest the machine can run (see TINY_KERNEL)."""
    return {"PV_kernel": TINY_KERNEL, "PV_ramdisk": "", "PV_args": ""}


def _cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


_XEN: Xen | None = None


def machine() -> Xen:
    """The session's machine, booted on first use (XlHost needs it outside any fixture). A machine
    that died (Xen reboots on a panic, which ends QEMU) fails the test it died in; the next test
    gets a new one, its predecessor's console kept beside it as serial-N.log."""
    global _XEN
    if _XEN is not None and _XEN.machine.dead():
        _XEN.machine.stop()
        died = _XEN.machine.serial
        died.rename(died.with_name(f"serial-{time.monotonic_ns()}.log"))
        _XEN = None
    if _XEN is None:
        _XEN = _boot(f"xend-realxen-{os.getpid()}")
    return _XEN


def _boot(name: str, **size) -> Xen:
    module = _machine_module()
    m = module.Machine(Path("/tmp") / name, **size)
    try:
        m.prepare(timeout=900)  # apt and the kernel download, when `make system-deps` did not run
        m.boot(timeout=240)
    except (module.MachineError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.fail(f"the real-Xen stage cannot run on this machine: {exc}", pytrace=False)
    atexit.register(m.stop)
    return Xen(m)


_XEN2: Xen | None = None


def second_machine() -> Xen:
    """The other host of the migration tests (tests/test_xl_migrate.py), booted on first use and
    powered off when the session ends: smaller than the first (4 pCPUs, 1 GiB), which is all a
    destination needs, and costs less to emulate beside it."""
    global _XEN2
    if _XEN2 is None or _XEN2.machine.dead():
        _XEN2 = _boot(f"xend-realxen2-{os.getpid()}", cpus=4, memory_mib=1024)
    return _XEN2


@pytest.fixture(scope="session", name="xen")
def xen_fixture() -> Xen:
    x = machine()
    yield x
    x.machine.stop()


@pytest.fixture(name="clean_xen")
def clean_xen_fixture(xen) -> Xen:
    """The machine with nothing but Domain-0 and Pool-0 when the test begins (what a test leaves,
    the next one's set-up removes: one clean per test, each xl call being slow)."""
    xen.clean()
    return xen
