"""Group operations through the official ``XenAPI`` client (API.md §6): ordering seen through events
(their ids give the order of the changes, their timestamps the delays) and the task's result,
``depends_on``, delays, partial failure with rollback, every operation, save/restore across a server
restart and on another server, and migration of a group between two servers on loopback.

Two module servers: ``host`` (4 GiB, so a member asking for more memory than is free fails) and
``other`` (the destination of migrations and of restores elsewhere). Tests there remove what they
made; the restart test has a server of its own.
"""

from __future__ import annotations

import socket
import threading
import time
import xmlrpc.client

import pytest
import XenAPI
from conftest import ServerProcess
from vmkit import (
    BOTH,
    MIB,
    Kit,
    backend_domain,
    event_from,
    failure,
    lacks,
    metrics,
    off_xl,
    on_xl,
    session,
    unique,
)

pytestmark = pytest.mark.backends(*BOTH)
SECOND_HOST = "it needs a second host, which one Xen machine cannot also be"
# xl takes a global lock to create a domain (and the backend runs one xl command at a time); under
# emulation a start with its reads takes over a second
SLOW_START = "its time bounds assume starts that take well under a second and may overlap"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, backend):
    base = tmp_path_factory.mktemp("vm-group-ops")
    host = ServerProcess(base / "host", "--memory", "4096", unix=False, host=backend).start()
    # one Xen machine is one host: the tests needing another (off_xl) do not run there
    other = ServerProcess(base / "other", unix=False, host=backend).start() if backend.name != "xl" else None
    yield host, other
    host.stop()
    if other is not None:
        other.stop()


class GroupKit(Kit):
    """vmkit's Kit (root on a shared server) that also removes the groups a test made."""

    def __init__(self, server) -> None:
        super().__init__(server)
        self.groups: list[str] = []

    def vm(self, name=None, **fields) -> str:
        fields = {"memory_target": 64 * MIB, "memory_static_max": 64 * MIB, "VCPUs_max": 1, **fields}
        return super().vm(name or unique("m"), **fields)

    def group(self, vms=(), name=None, **fields) -> str:
        ref = self.x.VM_group.create({"name_label": name or unique("grp"), "VMs": list(vms), **fields})
        self.groups.append(ref)
        return ref

    def adopt(self, uuid: str) -> str:
        """A VM that arrived here (migrated or restored), removed with this kit."""
        ref = self.x.VM.get_by_uuid(uuid)
        self.made.append(ref)
        return ref

    def close(self) -> None:
        super().close()
        session_ = session(self.server)
        for group in self.groups:
            try:
                session_.xenapi.VM_group.destroy(group)
            except XenAPI.Failure:
                pass
        session_.xenapi.session.logout()


@pytest.fixture
def kit(pair):
    k = GroupKit(pair[0])
    yield k
    k.close()


@pytest.fixture
def far(pair):
    k = GroupKit(pair[1])
    yield k
    k.close()


# -- watching what happens -------------------------------------------------------------------------

class Watcher:
    """Every VM event while an operation runs, read with event.from every 50 ms on a session and a
    thread of its own, in the order the changes were made (event ids).

    event.from sends the latest snapshot of each changed object, so it is read continuously to see
    a member reach Running and go back to Halted. Two server bugs shape how: a running operation's
    changes are published only when some request commits (each poll here does, when it ends), and
    a timestamp is the time the event was read, not made (test_member_changes_are_published_while_
    the_operation_runs, test_event_timestamps_say_when_members_changed). Polling this often keeps
    the timestamps within ~0.1 s of the changes, which is what the delay tests allow for.
    """

    POLL = 0.05

    def __init__(self, server) -> None:
        self.x = session(server).xenapi
        self.token = event_from(self.x, ["vm"], "", 0.0)["token"]
        self.events: list[tuple[float, int, str, dict]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            answer = event_from(self.x, ["vm"], self.token, self.POLL)
            self.token = answer["token"]
            for e in answer["events"]:
                if e["operation"] != "del":
                    self.events.append((float(e["timestamp"]), int(e["id"]), e["ref"], e["snapshot"]))
            if self.stopping.is_set() and not answer["events"]:
                return

    def stop(self) -> list[tuple[float, int, str, dict]]:
        """The events so far, in the order they were made."""
        time.sleep(2 * self.POLL)
        self.stopping.set()
        self.thread.join(10)
        self.x.session.logout()
        return sorted(self.events, key=lambda e: e[1])

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        if not self.stopping.is_set():
            self.stop()


def first_event(events, vm, state, not_domid=None) -> tuple[float, int, str, dict]:
    """The event of ``vm`` first reaching ``state`` (with a domid other than ``not_domid``: a reboot)."""
    for event in events:
        _stamp, _id, ref, snap = event
        if ref == vm and snap["power_state"] == state and (not_domid is None or snap["domid"] != not_domid):
            return event
    raise AssertionError(f"{vm} never reached {state}: {[(e[2], e[3]['power_state']) for e in events]}")


def first_time(events, vm, state, not_domid=None) -> float:
    """When (the event's timestamp) ``vm`` first reached ``state``."""
    return first_event(events, vm, state, not_domid)[0]


def first_id(events, vm, state, not_domid=None) -> int:
    """The event id (the order of the changes) of ``vm`` first reaching ``state``."""
    return first_event(events, vm, state, not_domid)[1]


def states_of(events, vm) -> list[str]:
    """The power states a VM went through, repeats folded."""
    out: list[str] = []
    for _stamp, _id, ref, snap in events:
        if ref == vm and (not out or out[-1] != snap["power_state"]):
            out.append(snap["power_state"])
    return out


def run_task(x, method, *args, seconds=60.0) -> tuple[dict, list[float]]:
    """``Async.<method>``, watched to its end: (task record, progress values seen)."""
    task = getattr(x.Async, method.split(".")[0])
    for part in method.split(".")[1:]:
        task = getattr(task, part)
    ref = task(*args)
    token, record, seen = "", x.task.get_record(ref), []
    deadline = time.monotonic() + seconds
    while record["status"] == "pending" and time.monotonic() < deadline:
        answer = event_from(x, [f"task/{ref}"], token, 1.0)
        token = answer["token"]
        for e in answer["events"]:
            if e["operation"] != "del":
                record = e["snapshot"]
                seen.append(float(record["progress"]))
    x.task.destroy(ref)
    return record, seen


def task_value(text: str):
    """A task's result: the XML-RPC text of the value."""
    if not text:
        return None
    (value,), _ = xmlrpc.client.loads(f"<methodResponse><params><param>{text}</param></params></methodResponse>")
    return value


def outcomes(record) -> dict[str, str]:
    """The task's result as {member ref: outcome}; each entry also names the member."""
    result = task_value(record["result"])
    assert isinstance(result, dict), record["result"]
    return {ref: entry["outcome"] for ref, entry in result.items()}


def assert_backend_matches(server, x, vm) -> None:
    """The store says what the simulated host has: no domain for a halted VM, the same state else."""
    record = x.VM.get_record(vm)
    domain = backend_domain(server, record["uuid"])
    live = metrics(x, vm)
    if record["power_state"] == "Halted":
        assert domain is None and record["domid"] == "-1" and record["resident_on"] == "OpaqueRef:NULL"
        assert live["memory_actual"] == "0"
    else:
        assert domain is not None and domain["state"] == record["power_state"], (record["name_label"], domain)
        if record["power_state"] != "Suspended":
            assert domain["domid"] == record["domid"]
            assert live["memory_actual"] == record["memory_target"]


# -- ordering --------------------------------------------------------------------------------------

@off_xl(SLOW_START)
def test_start_runs_in_ascending_order_equal_orders_together(kit):
    x = kit.x
    # names sort against the orders: the order decides
    first = kit.vm(unique("z-first"), order=0)
    slow = kit.vm(unique("m-slow"), order=1, start_delay=1)
    quick = kit.vm(unique("a-quick"), order=1)
    last = kit.vm(unique("b-last"), order=2)
    group = kit.group([first, slow, quick, last])
    with Watcher(kit.server) as watcher:
        record, progress = run_task(x, "VM_group.start", group, False)
        events = watcher.stop()
    assert record["status"] == "success" and float(record["progress"]) == 1.0
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert outcomes(record) == {first: "success", slow: "success", quick: "success", last: "success"}
    names = task_value(record["result"])
    assert names[slow]["name_label"] == x.VM.get_name_label(slow)
    order = {vm: first_id(events, vm, "Running") for vm in (first, slow, quick, last)}
    assert order[first] < min(order[slow], order[quick]) and max(order[slow], order[quick]) < order[last]
    # order 1 runs concurrently: quick does not wait for slow's start_delay (1 s), the next order does
    t = {vm: first_time(events, vm, "Running") for vm in (first, slow, quick, last)}
    assert abs(t[slow] - t[quick]) < 0.5
    assert t[last] - max(t[slow], t[quick]) >= 0.8
    for vm in (first, slow, quick, last):
        assert_backend_matches(kit.server, x, vm)


# (operation, arguments, state before, state after, direction)
OPERATIONS = [
    ("start", (True,), "Halted", "Paused", "up"),
    ("unpause", (), "Paused", "Running", "up"),
    ("pause", (), "Running", "Paused", "down"),
    ("suspend", (), "Running", "Suspended", "down"),
    ("resume", (False,), "Suspended", "Running", "up"),
    ("clean_reboot", (), "Running", "Running", "up"),
    ("hard_reboot", (), "Running", "Running", "up"),
    ("clean_shutdown", (), "Running", "Halted", "down"),
    ("hard_shutdown", (), "Paused", "Halted", "down"),
]


def bring_to(x, vm, state) -> None:
    if state != "Halted":
        x.VM.start(vm, state == "Paused", False)
    if state == "Suspended":
        x.VM.suspend(vm)
    assert x.VM.get_power_state(vm) == state


@pytest.mark.parametrize(("operation", "args", "before", "after", "direction"), OPERATIONS,
                         ids=[op[0] + ("_paused" if op[1] == (True,) else "") for op in OPERATIONS])
def test_each_operation_runs_in_its_order(kit, operation, args, before, after, direction):
    x = kit.x
    members = [kit.vm(unique("c"), order=2), kit.vm(unique("a"), order=0), kit.vm(unique("b"), order=1)]
    by_order = sorted(members, key=lambda vm: int(x.VM.get_order(vm)))
    group = kit.group(members)
    for vm in members:
        bring_to(x, vm, before)
    domids = {vm: x.VM.get_domid(vm) for vm in members}
    with Watcher(kit.server) as watcher:
        assert getattr(x.VM_group, operation)(group, *args) == ""
        events = watcher.stop()
    reboot = operation.endswith("reboot")
    times = {vm: first_id(events, vm, after, domids[vm] if reboot else None) for vm in members}
    seen = sorted(members, key=times.get)
    assert seen == (by_order if direction == "up" else by_order[::-1]), operation
    for vm in members:
        assert x.VM.get_power_state(vm) == after
        if reboot:
            assert x.VM.get_domid(vm) != domids[vm]  # a new domain
        assert_backend_matches(kit.server, x, vm)


def test_members_already_there_are_skipped(kit):
    x = kit.x
    running, halted = kit.vm(order=0), kit.vm(order=1)
    group = kit.group([running, halted])
    x.VM.start(running, False, False)
    domid = x.VM.get_domid(running)
    record, _ = run_task(x, "VM_group.start", group, False)
    assert record["status"] == "success"
    assert outcomes(record) == {running: "skipped: already running", halted: "success"}
    assert x.VM.get_domid(running) == domid and x.VM.get_power_state(halted) == "Running"
    record, _ = run_task(x, "VM_group.clean_shutdown", group)
    assert outcomes(record) == {running: "success", halted: "success"}
    record, _ = run_task(x, "VM_group.hard_shutdown", group)
    assert outcomes(record) == {running: "skipped: already halted", halted: "skipped: already halted"}


def test_an_empty_group_and_group0_have_nothing_to_do(kit):
    x = kit.x
    empty = kit.group()
    record, _ = run_task(x, "VM_group.start", empty, False)
    assert record["status"] == "success" and task_value(record["result"]) == {}
    group0 = x.VM_group.get_by_name_label("Group-0")[0]
    x.VM_group.hard_shutdown(group0)  # Domain-0 is never stopped by its group
    assert x.VM.get_power_state(x.VM_group.get_VMs(group0)[0]) == "Running"


# -- events of a running group operation ------------------------------------------------------------

@off_xl(SLOW_START)
def test_member_changes_are_published_while_the_operation_runs(kit):
    """API.md §3: every mutation emits an event. While a group start waits out its first member's
    start_delay, that member is Running, and a client waiting in event.from hears of it then.

    Fails today: the changes a running operation makes are published (and journalled) only by a
    commit (Services.commit in xend_ext/dispatch.py), which comes when the whole operation ends or
    when some other request happens to commit; an event.from already waiting is not woken, and
    times out empty-handed although the member has been running for a while.
    """
    x = kit.x
    slow = kit.vm(order=0, start_delay=2)
    later = kit.vm(order=1)
    group = kit.group([slow, later])
    token = event_from(x, ["vm"], "", 0.0)["token"]
    task = x.Async.VM_group.start(group, False)
    began = time.monotonic()
    answer = event_from(x, ["vm"], token, 1.5)  # slow runs, the operation waits out its start_delay
    heard = time.monotonic() - began
    while x.task.get_status(task) == "pending":
        time.sleep(0.1)
    assert x.task.get_status(task) == "success"
    x.task.destroy(task)
    running = [e for e in answer["events"] if e["ref"] == slow and e["snapshot"]["power_state"] == "Running"]
    assert running and heard < 1.0, (heard, [(e["ref"], e["snapshot"]["power_state"]) for e in answer["events"]])


def test_event_timestamps_say_when_members_changed(kit):
    """An event's timestamp is when the change happened (XAPI: "the time at which the event
    occurred"), so a group start's order and delays can be read from the events afterwards.

    Fails today: EventHub._event_record (xend_ext/events.py) stamps time.time() when the record is
    built, and event.from builds its records when it answers (EventHub.collect), so every event of
    one answer carries the time it was read: here both members seem to start at the same moment,
    after the operation ended.
    """
    x = kit.x
    first = kit.vm(order=0, start_delay=1)
    second = kit.vm(order=1)
    group = kit.group([first, second])
    token = event_from(x, ["vm"], "", 0.0)["token"]
    x.VM_group.start(group, False)
    ended = time.time()
    time.sleep(0.5)
    events = event_from(x, ["vm"], token, 1.0)["events"]
    stamps = {e["ref"]: float(e["timestamp"]) for e in events if e["ref"] in (first, second)}
    assert stamps[second] - stamps[first] >= 0.95, stamps  # first started a second before second
    assert stamps[second] <= ended, (stamps, ended)  # both before the call returned, not when read


# -- depends_on --------------------------------------------------------------------------------------

@on_xl()
def test_depends_on_comes_before_order(kit):
    x = kit.x
    db = kit.vm(unique("db"), order=5)
    web = kit.vm(unique("web"), order=0, depends_on=[db])
    cache = kit.vm(unique("cache"), order=0)
    group = kit.group([db, web, cache])
    with Watcher(kit.server) as watcher:
        x.VM_group.start(group, False)
        events = watcher.stop()
    t = {vm: first_id(events, vm, "Running") for vm in (db, web, cache)}
    assert t[cache] < t[db] < t[web]  # web waits for db despite its lower order
    with Watcher(kit.server) as watcher:
        x.VM_group.clean_shutdown(group)
        events = watcher.stop()
    t = {vm: first_id(events, vm, "Halted") for vm in (db, web, cache)}
    assert t[web] < t[db] < t[cache]  # stopping: the dependant first


def test_a_dependency_outside_the_group_must_be_running(kit):
    x = kit.x
    outside = kit.vm(unique("outside"))
    early = kit.vm(unique("early"), order=0)
    needy = kit.vm(unique("needy"), order=1, depends_on=[outside])
    group = kit.group([early, needy])
    record, _ = run_task(x, "VM_group.start", group, False)
    assert record["status"] == "failure"
    assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.start", needy]
    result = outcomes(record)
    assert result[early] == "rolled back"
    assert result[needy].startswith("failed: OPERATION_NOT_ALLOWED") and "not running" in result[needy]
    for vm in (early, needy, outside):
        assert x.VM.get_power_state(vm) == "Halted"
        assert_backend_matches(kit.server, x, vm)
    x.VM.start(outside, False, False)
    x.VM_group.start(group, False)
    assert x.VM.get_power_state(needy) == "Running" and x.VM.get_power_state(early) == "Running"


def test_a_dependency_cycle_is_refused(kit):
    x = kit.x
    a = kit.vm()
    b = kit.vm(depends_on=[a])
    x.VM.set_depends_on(a, [b])
    group = kit.group([a, b])
    assert failure(x.VM_group.start, group, False)[0] == "OPERATION_NOT_ALLOWED"
    assert x.VM.get_power_state(a) == x.VM.get_power_state(b) == "Halted"


def test_start_paused_with_depends_on(kit):
    """A group started paused: every member ends Paused, the dependency order kept.

    Fails today: a member waits for its dependency to be *Running*, which a paused start never
    makes it, so the dependant fails and the group start is rolled back.
    """
    x = kit.x
    db = kit.vm(unique("db"), order=0)
    web = kit.vm(unique("web"), order=1, depends_on=[db])
    group = kit.group([db, web])
    record, _ = run_task(x, "VM_group.start", group, True)
    assert record["status"] == "success", (record["error_info"], record["result"])
    assert x.VM.get_power_state(db) == x.VM.get_power_state(web) == "Paused"


# -- delays ------------------------------------------------------------------------------------------

def test_start_and_shutdown_delays(kit):
    x = kit.x
    a = kit.vm(order=0, start_delay=1)
    b = kit.vm(order=1, shutdown_delay=1)
    group = kit.group([a, b])
    with Watcher(kit.server) as watcher:
        began = time.monotonic()
        x.VM_group.start(group, False)
        took = time.monotonic() - began
        x.VM_group.clean_shutdown(group)
        events = watcher.stop()
    assert first_id(events, a, "Running") < first_id(events, b, "Running")
    assert 0.8 <= first_time(events, b, "Running") - first_time(events, a, "Running") < 3
    assert took >= 0.95
    # stopping: b (the higher order) first, then its shutdown_delay, then a
    assert first_id(events, b, "Halted") < first_id(events, a, "Halted")
    assert 0.8 <= first_time(events, a, "Halted") - first_time(events, b, "Halted") < 3


# -- partial failure and rollback ------------------------------------------------------------------

def test_partial_failure_rolls_back_and_reports_every_member(kit):
    x = kit.x
    host = x.host.get_all()[0]
    # a VM outside the group holds 1 GiB, so that some of the host is not free (on libvirt's test host
    # Domain-0 is the host itself and holds nothing)
    x.VM.start(kit.vm(unique("filler"), memory_target=1024 * MIB, memory_static_max=1024 * MIB), False, False)
    free = x.host.get_memory_free(host)
    first = kit.vm(unique("first"), order=0, start_delay=1)  # Running for a second before order 1
    second = kit.vm(unique("second"), order=1)
    # more than is free, though not more than the host has (a definition may not exceed that)
    need = int(free) + 512 * MIB
    assert need <= int(x.host.get_memory_total(host))
    huge = kit.vm(unique("huge"), order=1, memory_target=need, memory_static_max=need)
    last = kit.vm(unique("last"), order=2)
    members = [first, second, huge, last]
    group = kit.group(members)
    before = {vm: (x.VM.get_record(vm), metrics(x, vm)) for vm in members}
    with Watcher(kit.server) as watcher:
        record, progress = run_task(x, "VM_group.start", group, False)
        events = watcher.stop()
    assert record["status"] == "failure"
    assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.start", huge]
    result = outcomes(record)
    assert result[first] == result[second] == "rolled back"
    assert result[huge].startswith(f"failed: HOST_NOT_ENOUGH_FREE_MEMORY {need} ")
    assert result[last] == "not run"
    assert set(task_value(record["result"])[huge]) == {"name_label", "outcome"}
    # the members already started were started, then stopped again; the others never ran
    assert states_of(events, first)[-2:] == ["Running", "Halted"]
    assert "Running" not in states_of(events, huge) and "Running" not in states_of(events, last)
    # and the store matches the host: every member halted with no domain, memory given back
    for vm in members:
        record_now, metrics_now = x.VM.get_record(vm), metrics(x, vm)
        assert (record_now, metrics_now) == before[vm], x.VM.get_name_label(vm)
        assert_backend_matches(kit.server, x, vm)
    assert x.host.get_memory_free(host) == free
    # the synchronous call says the same
    assert failure(x.VM_group.start, group, False) == ["OPERATION_PARTIALLY_FAILED", "VM_group.start", huge]
    assert all(x.VM.get_power_state(vm) == "Halted" for vm in members)


def test_a_failed_shutdown_starts_the_stopped_members_again(kit):
    x = kit.x
    paused = kit.vm(unique("paused"), order=0)  # stops last, and a paused VM refuses a clean shutdown
    running = kit.vm(unique("running"), order=1)
    group = kit.group([paused, running])
    bring_to(x, paused, "Paused")
    bring_to(x, running, "Running")
    record, _ = run_task(x, "VM_group.clean_shutdown", group)
    assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.clean_shutdown", paused]
    result = outcomes(record)
    assert result[running] == "rolled back"
    assert result[paused].startswith("failed: VM_BAD_POWER_STATE")
    assert x.VM.get_power_state(running) == "Running" and x.VM.get_power_state(paused) == "Paused"
    for vm in (paused, running):
        assert_backend_matches(kit.server, x, vm)


def same_group(one: dict, two: dict) -> bool:
    """Two records of a group are the same (its VMs are a set)."""
    return {**one, "VMs": sorted(one["VMs"])} == {**two, "VMs": sorted(two["VMs"])}


# -- save and restore --------------------------------------------------------------------------------

@off_xl(SECOND_HOST)
def test_save_and_restore_across_a_server_restart(make_server, pair, tmp_path):
    server = make_server(unix=False)
    x = session(server).xenapi
    db = x.VM.create({"name_label": "db", "order": "0", "memory_target": str(64 * MIB),
                      "memory_static_max": str(64 * MIB)})
    web = x.VM.create({"name_label": "web", "order": "1", "depends_on": [db], "memory_target": str(64 * MIB),
                       "memory_static_max": str(64 * MIB)})
    cache = x.VM.create({"name_label": "cache", "order": "1", "memory_target": str(64 * MIB),
                         "memory_static_max": str(64 * MIB)})
    spare = x.VM.create({"name_label": "spare", "order": "2"})
    group = x.VM_group.create({"name_label": "shop", "placement": "anti_affinity", "name_description": "a shop",
                               "other_config": {"owner": "tests"}, "VMs": [db, web, cache, spare]})
    x.VM_group.start(group, False)
    x.VM.hard_shutdown(spare)
    x.VM.pause(cache)
    uuids = {vm: x.VM.get_uuid(vm) for vm in (db, web, cache, spare)}
    stored = x.VM_group.get_record(group)

    for outside in ("../../outside", "/etc/shop"):  # outside the image directory (--image-dir)
        assert failure(x.VM_group.save, group, outside)[:2] == ["VALUE_NOT_SUPPORTED", "directory"]
    folder = tmp_path / "saved"
    folder.mkdir()
    with Watcher(server) as watcher:
        record, _ = run_task(x, "VM_group.save", group, str(folder))
        events = watcher.stop()
    assert record["status"] == "success" and float(record["progress"]) == 1.0
    assert outcomes(record) == {db: "success", web: "success", cache: "success", spare: "skipped: already halted"}
    t = {vm: first_id(events, vm, "Halted") for vm in (db, web, cache)}
    assert max(t[web], t[cache]) < t[db]  # saving goes down the order
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["group.sxp", *(f"{uuids[vm]}.img" for vm in (db, web, cache))])
    for vm in (db, web, cache, spare):
        assert x.VM.get_power_state(vm) == "Halted"
        assert_backend_matches(server, x, vm)

    # a toolstack restart: the group and its (halted) members are still there
    assert server.stop() == 0
    server = make_server(state_dir=server.state_dir, unix=False)
    x = session(server).xenapi
    assert same_group(x.VM_group.get_record(group), stored)
    assert all(x.VM.get_power_state(vm) == "Halted" for vm in stored["VMs"])

    with Watcher(server) as watcher:
        record, _ = run_task(x, "VM_group.restore", str(folder))
        events = watcher.stop()
    assert record["status"] == "success" and float(record["progress"]) == 1.0
    assert task_value(record["result"]) == group
    assert same_group(x.VM_group.get_record(group), stored)
    assert {vm: x.VM.get_power_state(vm) for vm in stored["VMs"]} == {
        db: "Running", web: "Running", cache: "Paused", spare: "Halted"}
    assert x.VM.get_depends_on(web) == [db]
    t = {vm: first_id(events, vm, state) for vm, state in ((db, "Running"), (web, "Running"), (cache, "Paused"))}
    assert t[db] < min(t[web], t[cache])  # restoring goes up the order
    for vm in stored["VMs"]:
        assert_backend_matches(server, x, vm)

    # the same directory restores on another server: the group, its members and their orders
    other = pair[1]
    y = session(other).xenapi
    restored = y.VM_group.restore(str(folder))
    try:
        record = y.VM_group.get_record(restored)
        assert {k: record[k] for k in ("uuid", "name_label", "name_description", "placement", "other_config")} == {
            k: stored[k] for k in ("uuid", "name_label", "name_description", "placement", "other_config")}
        there = {y.VM.get_uuid(vm): vm for vm in record["VMs"]}
        assert sorted(there) == sorted(uuids[vm] for vm in (db, web, cache))
        assert y.VM.get_power_state(there[uuids[cache]]) == "Paused"
        assert y.VM.get_power_state(there[uuids[db]]) == y.VM.get_power_state(there[uuids[web]]) == "Running"
        assert [y.VM.get_order(there[uuids[vm]]) for vm in (db, web, cache)] == ["0", "1", "1"]
        for vm in there.values():
            assert y.VM.get_groups(vm) == [restored]
            assert_backend_matches(other, y, vm)
    finally:
        for vm in y.VM_group.get_VMs(restored):
            y.VM.hard_shutdown(vm)
            y.VM.destroy(vm)
        y.VM_group.destroy(restored)


@off_xl(SECOND_HOST)
def test_restore_elsewhere_keeps_depends_on(kit, far, tmp_path):
    """depends_on between members is part of the group's ordering and must survive a restore on
    another server.

    Fails today: VM images carry no depends_on (vm.record_for_image skips it) and the group
    manifest (group.sxp) records only each member's order, so on the other server ``web`` no
    longer waits for ``db``.
    """
    x = kit.x
    db = kit.vm(unique("db"), order=0)
    web = kit.vm(unique("web"), order=0, depends_on=[db])
    group = kit.group([db, web])
    x.VM_group.start(group, False)
    x.VM_group.save(group, str(tmp_path))
    restored = far.x.VM_group.restore(str(tmp_path))
    far.groups.append(restored)
    db_there, web_there = far.adopt(x.VM.get_uuid(db)), far.adopt(x.VM.get_uuid(web))
    assert far.x.VM.get_groups(web_there) == [restored]
    assert far.x.VM.get_depends_on(web_there) == [db_there]


@off_xl(SECOND_HOST)
def test_restore_refuses_a_name_taken_by_another_group(kit, far, tmp_path):
    x = kit.x
    vm = kit.vm()
    name = unique("taken")
    group = kit.group([vm], name=name)
    x.VM_group.start(group, False)
    x.VM_group.save(group, str(tmp_path))
    far.group(name=name)
    before = far.x.VM.get_all()
    assert failure(far.x.VM_group.restore, str(tmp_path))[:3] == ["VALUE_NOT_SUPPORTED", "name_label", name]
    assert far.x.VM.get_all() == before
    assert failure(x.VM_group.restore, str(tmp_path / "nothing-here"))[:2] == ["VALUE_NOT_SUPPORTED", "directory"]
    # here, where the group is, it comes back
    assert x.VM_group.restore(str(tmp_path)) == group
    assert x.VM.get_power_state(vm) == "Running"


def test_a_relative_directory_is_taken_from_the_image_directory(kit, tmp_path):
    """Server-side paths live in the image directory (--image-dir): a relative directory is taken
    from it, and one that leads outside it (``..``, a symlink) is refused before anything changes."""
    x = kit.x
    vm = kit.vm()
    group = kit.group([vm])
    x.VM_group.start(group, False)
    relative = str(tmp_path.relative_to(kit.server.image_root) / "saved")
    x.VM_group.save(group, relative)
    assert (tmp_path / "saved" / "group.sxp").is_file()
    (tmp_path / "out").symlink_to("/etc")
    for outside in ("../../elsewhere", str(tmp_path / "out")):
        refused = failure(x.VM_group.restore, outside)
        assert refused[:3] == ["VALUE_NOT_SUPPORTED", "directory", outside], refused
    assert x.VM.get_power_state(vm) == "Halted"
    assert x.VM_group.restore(relative) == group
    assert x.VM.get_power_state(vm) == "Running"


# -- migration ------------------------------------------------------------------------------------

@pytest.mark.backends(*BOTH)
@pytest.mark.parametrize(("live", "group_there"), [(False, False), (True, True)],
                         ids=["not-live-new-group", "live-existing-group"])
def test_migrate_a_group(kit, far, live, group_there):
    x, y = kit.x, far.x
    name = unique("travel")
    first = kit.vm(unique("first"), order=0, other_config={"k": "v"})
    paused = kit.vm(unique("paused"), order=1)
    halted = kit.vm(unique("halted"), order=2)
    group = kit.group([first, paused, halted], name=name, placement="anti_affinity")
    bring_to(x, first, "Running")
    bring_to(x, paused, "Paused")
    uuids = {vm: x.VM.get_uuid(vm) for vm in (first, paused, halted)}
    waiting = far.group(name=name) if group_there else None
    with Watcher(far.server) as watcher:
        record, progress = run_task(x, "VM_group.migrate", group, far.server.url, live)
        events = watcher.stop()
    assert record["status"] == "success", record["error_info"]
    assert progress[-1] == 1.0
    assert outcomes(record) == {first: "success", paused: "success", halted: "skipped: already halted"}

    # gone from here (the halted member stays, with the group)
    for vm in (first, paused):
        assert failure(x.VM.get_record, vm)[0] == "HANDLE_INVALID"
        assert backend_domain(kit.server, uuids[vm]) is None
    assert x.VM_group.get_VMs(group) == [halted]
    # there, running as before, gathered in a group of the same name
    moved = {vm: far.adopt(uuids[vm]) for vm in (first, paused)}
    assert y.VM.get_power_state(moved[first]) == "Running" and y.VM.get_power_state(moved[paused]) == "Paused"
    assert y.VM.get_other_config(moved[first]) == {"k": "v"}
    there = y.VM_group.get_by_name_label(name)
    assert len(there) == 1
    far.groups.append(there[0])
    if waiting:
        assert there == [waiting]
    else:
        assert y.VM_group.get_placement(there[0]) == "anti_affinity"
    assert sorted(y.VM_group.get_VMs(there[0])) == sorted(moved.values())
    for vm in moved.values():
        assert y.VM.get_groups(vm) == there
        assert_backend_matches(far.server, y, vm)
    # in ascending order
    assert first_id(events, moved[first], "Running") < first_id(events, moved[paused], "Paused")


@pytest.mark.backends(*BOTH)
def test_group_migration_keeps_depends_on(kit, far):
    """Members travel together, so depends_on between them must hold on the destination.

    Fails today: the migrated VM's record carries no depends_on (vm.record_for_image skips it) and
    VM_group.migrate does not restore it, so the group's ordering is lost on the destination.
    """
    x = kit.x
    db = kit.vm(unique("db"), order=0)
    web = kit.vm(unique("web"), order=1, depends_on=[db])
    group = kit.group([db, web])
    x.VM_group.start(group, False)
    uuids = (x.VM.get_uuid(db), x.VM.get_uuid(web))
    x.VM_group.migrate(group, far.server.url, True)
    db_there, web_there = (far.adopt(u) for u in uuids)
    far.groups.extend(far.x.VM_group.get_by_name_label(x.VM_group.get_name_label(group)))
    assert far.x.VM.get_power_state(web_there) == "Running"
    assert far.x.VM.get_depends_on(web_there) == [db_there]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_a_failed_group_migration_keeps_the_group_here(kit):
    x = kit.x
    first, second = kit.vm(order=0), kit.vm(order=1)
    group = kit.group([first, second])
    x.VM_group.start(group, False)
    domids = {vm: x.VM.get_domid(vm) for vm in (first, second)}
    record, _ = run_task(x, "VM_group.migrate", group, closed_port_url(), False)
    assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.migrate", first]
    result = outcomes(record)
    why = "NOT_IMPLEMENTED migrate" if lacks(kit.server, "migrate") else "VM_MIGRATE_FAILED"
    assert result[first].startswith(f"failed: {why}") and result[second] == "not run", result
    assert sorted(x.VM_group.get_VMs(group)) == sorted([first, second])
    for vm in (first, second):
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domids[vm]
        assert_backend_matches(kit.server, x, vm)
