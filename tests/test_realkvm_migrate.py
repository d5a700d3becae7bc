"""libvirt's own peer-to-peer live migration between two xend-ext servers (issue 21, item 3).

Two private libvirtds of the real-KVM stage (tests/realkvm.py: ``daemon(0)`` and ``daemon(1)``,
distinct host uuids and migration ports) each run by a xend-ext server told its own daemon's URI
(``--libvirt-migrate-uri``, the stream on 127.0.0.1). A running guest, then a two-member group
through ``xm grp-migrate --live``, move live through the Xen-API of the two servers, checked in
``virsh list`` on both daemons and by the guest's CPU time still growing on the destination.
Failures: a destination that refuses (a VM of the same name there), a migration that fails in
the destination's QEMU (the guest's kernel file deleted after it started: QEMU cannot start
there) and a task.cancel while libvirt migrates (caught there by a relay held in front of the
destination's libvirtd: libvirt's job is aborted) leave the VM running on the source and nothing
on the destination; in a group, the member already moved comes back. The downtime (libvirt's
figure, from the destination) and total time are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import XenAPI
from conftest import ServerProcess
from hosts import KvmHost
from realkvm import GUEST, daemon
from vmkit import MIB, migrate_live, new_vm, unique
from xmkit import ok, xm

pytestmark = [pytest.mark.realkvm, pytest.mark.timeout(240)]

MEMORY = 32 * MIB  # the tiny guest needs no more; its memory is what pre-copy sends


class HeldLink:
    """The stand-in for a slow network in front of a libvirtd: a relay on a Unix socket of its own,
    passing bytes both ways, but while held the daemon's answers wait (a peer-to-peer migration
    to it then waits at its first exchange, so task.cancel can be caught before it is over)."""

    def __init__(self, target: str, path: Path) -> None:
        self.target, self.uri = target, f"qemu+unix:///system?socket={path}"
        self.passing = threading.Event()
        self.passing.set()
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.socket(socket.AF_UNIX)
            far.connect(self.target)
            self.connections += 1
            threading.Thread(target=self._pump, args=(near, far, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near, self.passing), daemon=True).start()

    @staticmethod
    def _pump(src, dst, gate) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if gate is not None:
                    gate.wait()
                dst.sendall(data)
        for end in (src, dst):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        self.passing.clear()

    def release(self) -> None:
        self.passing.set()

    def close(self) -> None:
        self.passing.set()
        self.listener.close()


class KvmHostBehind(KvmHost):
    """Server B's host, offering the held link's URI to the sources' libvirtds."""

    def __init__(self, link: HeldLink) -> None:
        super().__init__(1, migrate=True)
        self.link = link

    def args(self, state_dir, extra):
        own = super().args(state_dir, extra)
        own[own.index("--libvirt-migrate-uri") + 1] = self.link.uri
        return own


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Server A on the stage's libvirtd, server B on a second one (behind a HeldLink); both offer
    live migration."""
    here, there = daemon(0), daemon(1)
    root = tmp_path_factory.mktemp("p2p")
    link = HeldLink(f"{there.dir}/sock/libvirt-sock", root / "link.sock")
    a = ServerProcess(root / "a", unix=False, host=KvmHost(0, migrate=True)).start()
    b = ServerProcess(root / "b", unix=False, host=KvmHostBehind(link)).start()
    yield a, b, here, there, link
    a.stop()
    b.stop()
    link.close()
    here.clean()
    there.stop()


def login(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "", "1.0", "p2p")
    return session.xenapi


@pytest.fixture
def hosts(pair):
    a, b, here, there, _link = pair
    x, y = login(a), login(b)
    yield x, y, pair
    for api in (x, y):  # whatever a test left, on either server
        for vm in api.VM.get_all():
            if api.VM.get_is_control_domain(vm):
                continue
            if api.VM.get_power_state(vm) != "Halted":
                api.VM.hard_shutdown(vm)
            api.VM.destroy(vm)
        for group in api.VM_group.get_all():
            if api.VM_group.get_name_label(group).startswith(("grp-", "half-")):  # ours, not the default group
                api.VM_group.destroy(group)


def guest(x, name, kernel=str(GUEST), order=0):
    vm = new_vm(x, name, memory_target=str(MEMORY), memory_static_max=str(MEMORY), VCPUs_at_startup="1",
                VCPUs_max="1", PV_kernel=kernel, PV_args="burn", order=str(order))
    x.VM.start(vm, False, False)
    return vm


def listed(libvirtd):
    """virsh list: name -> state, of every domain the daemon has (running or defined)."""
    rows = libvirtd.virsh("list", "--all").splitlines()[2:]
    return {cols[1]: " ".join(cols[2:]) for cols in (r.split() for r in rows) if len(cols) >= 3}


def cpu_time(libvirtd, name):
    return float(re.search(r"CPU time:\s+([\d.]+)s", libvirtd.virsh("dominfo", name)).group(1))


def runs(libvirtd, *names):
    """They run there, and their vCPUs go on spinning: their CPU time grows (a paused one's does not)."""
    before = [cpu_time(libvirtd, name) for name in names]
    time.sleep(1.0)
    found = listed(libvirtd)
    for name, then in zip(names, before, strict=True):
        assert found[name] == "running" and cpu_time(libvirtd, name) > then, name


def test_a_running_guest_moves_live_to_the_other_libvirt_host(hosts, capsys):
    x, y, (a, b, here, there, link) = hosts
    offer = y.VM.migrate_check([])  # what B offers a source: its libvirtd's URI, the stream's address
    assert offer["libvirt_migrate_uri"] == link.uri and offer["libvirt_migrate_address"] == "127.0.0.1"
    name = unique("p2p")
    vm = guest(x, name)
    uuid = x.VM.get_uuid(vm)
    assert listed(here)[name] == "running" and name not in listed(there)

    record, took = migrate_live(x, vm, b.url)
    assert record["status"] == "success", record["error_info"]
    figures = record["other_config"]
    downtime, total = float(figures[f"migration_downtime:{uuid}"]), float(figures[f"migration_time:{uuid}"])
    with capsys.disabled():
        print(f"\n[realkvm] libvirt p2p live migration of a running {MEMORY // MIB} MiB guest: total {total:.2f} s "
              f"(the task {took:.2f} s), downtime {downtime:.3f} s")
    assert 0 <= downtime < total <= took
    assert name not in listed(here) and x.VM.get_by_name_label(name) == []
    runs(there, name)
    assert "Persistent:     yes" in there.virsh("dominfo", name)  # defined there, gone here
    arrived = y.VM.get_by_uuid(uuid)
    assert y.VM.get_power_state(arrived) == "Running" and y.VM.get_name_label(arrived) == name
    assert y.VM.get_domid(arrived) == there.virsh("domid", name).strip()
    assert y.VM.get_pool_name(arrived) == "Pool-0"


def test_a_group_moves_live_with_xm_grp_migrate(hosts, capsys):
    x, y, (a, b, here, there, link) = hosts
    members = [guest(x, unique("gp2p"), order=n) for n in range(2)]
    names, uuids = [x.VM.get_name_label(m) for m in members], [x.VM.get_uuid(m) for m in members]
    group = unique("grp")
    x.VM_group.create({"name_label": group, "VMs": members})
    began = time.monotonic()
    ok(xm(a, "grp-migrate", group, b.url, "--live", timeout=200))
    took = time.monotonic() - began
    # each member's downtime, as the destination's receive tasks noted it (libvirt's figure)
    noted = {k: v for t in y.task.get_all() for k, v in y.task.get_other_config(t).items()}
    downtimes = [float(noted[f"migration_downtime:{uuid}"]) for uuid in uuids]
    with capsys.disabled():
        print(f"[realkvm] xm grp-migrate --live of two running guests: total {took:.2f} s, downtimes "
              f"{', '.join(f'{d:.3f} s' for d in downtimes)}")
    assert not set(names) & set(listed(here))
    runs(there, *names)
    for member in names:
        assert y.VM.get_power_state(y.VM.get_by_name_label(member)[0]) == "Running"
    grouped = y.VM_group.get_by_name_label(group)
    assert sorted(y.VM.get_name_label(m) for m in y.VM_group.get_VMs(grouped[0])) == sorted(names)
    assert x.VM_group.get_by_name_label(group) == [] or x.VM_group.get_VMs(x.VM_group.get_by_name_label(group)[0]) == []


def test_a_refusal_or_a_failed_move_leaves_the_guest_running_here(hosts, tmp_path):
    x, y, (a, b, here, there, link) = hosts
    # refused by the destination's check, before anything moves
    name = unique("stay")
    vm = guest(x, name)
    y.VM.create({"name_label": name, "memory_target": str(MEMORY), "memory_static_max": str(MEMORY),
                 "VCPUs_at_startup": "1", "VCPUs_max": "1", "PV_kernel": str(GUEST)})  # its name is taken there
    record, _ = migrate_live(x, vm, b.url)
    assert record["error_info"][0] == "VM_MIGRATE_FAILED" and "another VM has this name" in record["error_info"][-1]
    assert name not in listed(there) and x.VM.get_power_state(vm) == "Running"

    # failed in the destination's QEMU: its kernel file is gone, the running guest no longer needs it
    kernel = tmp_path / "kernel"
    shutil.copy(GUEST, kernel)
    broken = unique("broken")
    vm = guest(x, broken, kernel=str(kernel), order=1)
    os.unlink(kernel)
    record, _ = migrate_live(x, vm, b.url)
    assert record["error_info"][0] == "VM_MIGRATE_FAILED" and "could not open kernel file" in record["error_info"][-1]
    runs(here, name, broken)
    assert x.VM.get_power_state(vm) == "Running" and broken not in listed(there)
    assert y.VM.get_by_name_label(broken) == []
    assert all(y.task.get_status(t) != "pending" for t in y.task.get_all())  # its receive ended there

    # cancelled while libvirt migrates (held at its first exchange with the destination's libvirtd):
    # the source aborts libvirt's job (abortJob), and the guest runs on here
    first = guest(x, unique("back"), order=0)
    seen, logged = link.connections, len(a.log)
    link.hold()
    try:
        task = x.Async.VM.migrate(first, b.url, True)
        deadline = time.monotonic() + 60
        while link.connections == seen:  # the source's libvirtd calls the destination's
            assert time.monotonic() < deadline and x.task.get_status(task) == "pending"
            time.sleep(0.05)
        x.task.cancel(task)
        while not any("aborting libvirt's migration" in line for line in a.log[logged:]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        link.release()
    while x.task.get_status(task) in ("pending", "cancelling"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert x.task.get_status(task) == "cancelled", x.task.get_error_info(task)
    assert x.VM.get_power_state(first) == "Running" and x.VM.get_name_label(first) not in listed(there)
    assert not any(r["status"] == "pending" for r in y.task.get_all_records().values())

    # a group whose second member fails there: the first, moved already, comes back
    group = unique("half")
    x.VM_group.create({"name_label": group, "VMs": [first, vm]})
    done = xm(a, "grp-migrate", group, b.url, "--live", timeout=200)
    assert done.returncode != 0 and "could not open kernel file" in done.stdout + done.stderr
    back = (x.VM.get_name_label(first), broken)
    runs(here, *back)
    assert not set(back) & set(listed(there)) and all(y.VM.get_by_name_label(m) == [] for m in back)
    assert x.VM.get_power_state(first) == "Running"
