"""The cost of one call must not grow with the number of stored objects (issue 15).

Counts work, never time: the objects the model hands out (scans, index look-ups) and the objects
announced as changed, for each call at 1,000 and at 10,000 VMs. The server runs in this process
(on its own loop and thread, on a real socket, driven by a real XML-RPC client) so its model can
be counted; the VMs are made through the model directly, not by 10,000 calls.
"""

from __future__ import annotations

import asyncio
import threading
import xmlrpc.client
from collections import Counter

import pytest

from xend_ext.dispatch import Context
from xend_ext.server import Config, Server

SMALL, LARGE = 1_000, 10_000


class Counted:
    """A real server on a real socket, in a thread of this process, with its model's work counted."""

    def __init__(self, state_dir) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(Config(state_dir=state_dir, listen=[("127.0.0.1", 0)], unix=None))
        self.work: Counter[str] = Counter()
        self._count_model()
        self.run(self.server.start())
        self.proxy = xmlrpc.client.ServerProxy(self.server.addresses[0], allow_none=True)
        self.session = self.ok(self.proxy.session.login_with_password("root", ""))

    def _count_model(self) -> None:
        db, hub, work = self.server.db, self.server.hub, self.work

        def handed_out(name, method):
            def wrapper(*args):
                objs = list(method(*args))
                work["visited"] += len(objs)
                return objs
            setattr(db, name, wrapper)

        for name in ("all", "values", "find_by"):
            handed_out(name, getattr(db, name))
        changed = hub.changed

        def announce(obj, op, seq):
            work["changed"] += 1
            changed(obj, op, seq)

        hub.changed = announce

    def run(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def ok(self, reply):
        assert reply["Status"] == "Success", reply
        return reply["Value"]

    def call(self, method, *args):
        """One call's work: (objects handed out by the model, objects announced as changed)."""
        self.work.clear()
        fn = self.proxy
        for part in method.split("."):
            fn = getattr(fn, part)
        value = self.ok(fn(self.session, *args))
        return (self.work["visited"], self.work["changed"]), value

    def add_vms(self, first: int, count: int) -> None:
        async def make():
            ctx = Context(self.server.services, "test")
            create = self.server.registry.methods["VM.create"][1].impl
            for i in range(first, first + count):
                create(ctx, {"name_label": f"vm-{i}"})
            await self.server.services.commit(self.server.db.last_seq)

        self.run(make())

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def counted(tmp_path):
    server = Counted(tmp_path / "state")
    yield server
    server.stop()


def costs(x: Counted, victim: str) -> dict[str, tuple[int, int]]:
    """The work of each call measured, on a VM in the middle of the crowd."""
    vm = x.ok(x.proxy.VM.get_by_name_label(x.session, "vm-42"))[0]
    found = {}
    found["start"], _ = x.call("VM.start", vm, False, False)
    found["pause"], _ = x.call("VM.pause", vm)
    found["unpause"], _ = x.call("VM.unpause", vm)
    found["hard_shutdown"], _ = x.call("VM.hard_shutdown", vm)
    found["set_name_label"], _ = x.call("VM.set_name_label", vm, "renamed")
    x.call("VM.set_name_label", vm, "vm-42")
    key = f"k{x.server.db.count('VM')}"
    found["add_to_other_config"], _ = x.call("VM.add_to_other_config", vm, key, "v")
    found["records_where"], where = x.call("VM.get_all_records_where", 'field "name_label"="vm-42"')
    assert list(where) == [vm]
    # the index gives the candidates; the whole expression still decides
    assert x.ok(x.proxy.VM.get_all_records_where(
        x.session, 'field "name_label"="vm-42" and field "power_state"="Running"')) == {}
    assert list(x.ok(x.proxy.VM.get_all_records_where(
        x.session, 'field "name_label"="vm-42" and field "domid"="-1"'))) == [vm]
    found["get_by_name_label"], _ = x.call("VM.get_by_name_label", "vm-7")
    found["destroy"], _ = x.call("VM.destroy", x.ok(x.proxy.VM.get_by_name_label(x.session, victim))[0])
    return found


def test_one_call_costs_the_same_at_1k_and_10k_vms(counted):
    x = counted
    x.add_vms(0, SMALL)
    # a few running VMs beside the crowd of halted ones, as on a host with many definitions
    for i in range(100, 104):
        x.ok(x.proxy.VM.start(x.session, x.ok(x.proxy.VM.get_by_name_label(x.session, f"vm-{i}"))[0],
                              False, False))
    small = costs(x, f"vm-{SMALL - 1}")
    x.add_vms(SMALL, LARGE - SMALL)
    large = costs(x, f"vm-{LARGE - 1}")
    assert large == small, f"work grew with the number of VMs: {small} at {SMALL}, {large} at {LARGE}"
    # and it is small: a start announces the VM, its metrics, the host and the shares it moved
    assert all(visited <= 20 and changed <= 12 for visited, changed in small.values()), small


def test_a_restart_announces_each_object_once_at_most(counted, tmp_path):
    x = counted
    x.add_vms(0, LARGE)
    for i in range(4):
        x.ok(x.proxy.VM.start(x.session, x.ok(x.proxy.VM.get_by_name_label(x.session, f"vm-{i}"))[0],
                              False, False))
    x.stop()
    again = Counted(tmp_path / "state")
    try:
        stored = sum(len(table) for table in again.server.db.tables.values())
        # counted from the model's creation on: load, reconcile and the login
        assert again.work["changed"] <= 50, again.work
        assert again.work["visited"] <= 5 * stored, (again.work, stored)  # a few passes, not one per VM
    finally:
        again.stop()
