"""Migration between two real Xen hosts, each run by its own xend-ext (issue 21, the xl part).

The first emulated machine (tests/realxen.py) is the source; a second, smaller one is the
destination. A running guest, then a two-member group through ``xm grp-migrate``, move through the
Xen-API of the two servers; each step is checked in ``xl list`` on both machines. xl migrates by
save, stream and restore: ``xl migrate`` is live only and needs log-dirty paging, which this Xen
(Debian's 4.17, no shadow paging) cannot give a PV guest. The downtime (the guest stopped: from
its save here to its restore there) and the total time are printed.
"""

from __future__ import annotations

import time

import pytest
from conftest import ServerProcess
from hosts import XlHost
from realxen import (  # noqa: F401 - clean_xen_fixture and xen_fixture are the fixtures clean_xen and xen
    MIB,
    clean_xen_fixture,
    pv_fields,
    second_machine,
    xen_fixture,
)
from vmkit import migrate_live, new_vm, session, unique
from xmkit import ok, xm

# the bound is on the test itself: a machine boot has its own (240 s)
pytestmark = [pytest.mark.timeout(600, func_only=True), pytest.mark.realxen]

GUEST = 32 * MIB  # the tiny guest needs no more; its image is what travels


class SecondXen(XlHost):
    """The destination: the second machine (clean when its server is new)."""

    def args(self, state_dir, extra):
        xen = second_machine()
        xen.clean()
        return ["--backend", "xl", "--xl-path", xen.xl, "--xl-poll", "5"]


@pytest.fixture
def two_hosts(clean_xen, tmp_path):
    src = ServerProcess(tmp_path / "src", host=XlHost()).start()
    dst = ServerProcess(tmp_path / "dst", host=SecondXen()).start()
    yield src, dst, clean_xen, second_machine()
    src.stop()
    dst.stop()


def running_guest(x, name):
    vm = new_vm(x, name, memory_target=str(GUEST), memory_static_max=str(GUEST), VCPUs_at_startup="1",
                VCPUs_max="1", **pv_fields())
    x.VM.start(vm, False, False)
    return vm


def migrated(x, vm, url):
    """Async.VM.migrate; (total seconds, downtime seconds from the task's figures)."""
    uuid = x.VM.get_uuid(vm)
    record, total = migrate_live(x, vm, url)
    assert record["status"] == "success", record["error_info"]
    return total, float(record["other_config"][f"migration_downtime:{uuid}"])


def test_a_running_guest_and_a_group_move_to_the_other_xen_host(two_hosts):
    src, dst, here, there = two_hosts
    x, y = session(src).xenapi, session(dst).xenapi
    name = unique("mig")
    vm = running_guest(x, name)
    uuid = x.VM.get_uuid(vm)
    assert here.domains()[name]["uuid"] == uuid and name not in there.domains()

    total, downtime = migrated(x, vm, dst.url)
    print(f"\nxl migration of a running {GUEST // MIB} MiB guest: total {total:.1f} s, downtime {downtime:.1f} s")
    assert name not in here.domains() and x.VM.get_by_name_label(name) == []
    row = there.domains()[name]
    arrived = y.VM.get_by_uuid(uuid)
    assert row["uuid"] == uuid and row["state"] != "--p---" and int(y.VM.get_domid(arrived)) == row["domid"]
    assert y.VM.get_power_state(arrived) == "Running" and row["mem"] == GUEST // MIB
    y.VM.hard_shutdown(arrived)

    # a group of two, with xm
    members = [running_guest(x, unique("gm")) for _ in range(2)]
    names = [x.VM.get_name_label(m) for m in members]
    group = unique("grp")
    x.VM_group.create({"name_label": group, "VMs": members})
    began = time.monotonic()
    ok(xm(src, "grp-migrate", group, dst.url, timeout=500))
    print(f"xm grp-migrate of two running guests: total {time.monotonic() - began:.1f} s")
    listed_here, listed_there = here.domains(), there.domains()
    for member in names:
        assert member not in listed_here and listed_there[member]["state"] != "--p---"
        assert y.VM.get_power_state(y.VM.get_by_name_label(member)[0]) == "Running"
    grouped = y.VM_group.get_by_name_label(group)
    assert sorted(y.VM.get_name_label(m) for m in y.VM_group.get_VMs(grouped[0])) == sorted(names)


def test_a_destination_that_cannot_take_the_guest_refuses_before_anything_moves(two_hosts):
    src, dst, here, there = two_hosts
    x, y = session(src).xenapi, session(dst).xenapi
    name = unique("stay")
    vm = running_guest(x, name)
    y.VM.create({**pv_fields(), "name_label": name, "memory_target": str(GUEST),
                 "memory_static_max": str(GUEST), "VCPUs_at_startup": "1", "VCPUs_max": "1"})  # its name is taken
    task = x.Async.VM.migrate(vm, dst.url, True)
    while x.task.get_status(task) == "pending":
        time.sleep(0.2)
    error = x.task.get_error_info(task)
    assert error[0] == "VM_MIGRATE_FAILED" and "another VM has this name" in error[-1], error
    assert here.domains()[name]["state"] != "--p---" and x.VM.get_power_state(vm) == "Running"
    assert name not in there.domains()
    images = dst.state_dir / "images"
    assert not images.exists() or not any(images.iterdir())
