"""VM.migrate between two real servers on loopback: the VM leaves the source and runs on the destination
with the same uuid and definition; a failed migration leaves it running on the source."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import XenAPI
from conftest import ServerProcess
from vmkit import MIB, Kit, backend_domain, event_from, failure, metrics, unique

DEFINITION = ("name_label", "name_description", "memory_target", "memory_static_max", "VCPUs_at_startup",
              "VCPUs_max", "VCPUs_params", "PV_kernel", "PV_ramdisk", "PV_args", "other_config", "order",
              "auto_power_on", "pool_name", "actions_after_crash")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("vm-migrate")
    source = ServerProcess(base / "source", unix=False).start()
    destination = ServerProcess(base / "destination", unix=False).start()
    yield source, destination
    source.stop()
    destination.stop()


@pytest.fixture
def src(pair):
    k = Kit(pair[0])
    yield k
    k.close()


@pytest.fixture
def dst(pair):
    k = Kit(pair[1])
    yield k
    k.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _definition(x, vm):
    record = x.VM.get_record(vm)
    return {k: record[k] for k in DEFINITION}


def _running_vm(kit, state="Running"):
    vm = kit.vm(unique("mig"), memory_target=144 * MIB, memory_static_max=400 * MIB, VCPUs_at_startup=2,
                VCPUs_max=3, VCPUs_params={"weight": "384", "cap": "120", "cpumap1": "1,2"},
                other_config={"owner": "tests"}, PV_kernel="/boot/vmlinuz", PV_args="root=/dev/xvda1",
                name_description="travels")
    kit.x.VM.start(vm, state == "Paused", False)
    return vm


def _gone_from(kit, vm, uuid):
    x = kit.x
    assert failure(x.VM.get_record, vm)[0] == "HANDLE_INVALID"
    assert failure(x.VM.get_by_uuid, uuid)[0] == "UUID_INVALID"
    assert backend_domain(kit.server, uuid) is None


def _adopt(dst, uuid):
    """The destination's ref of a migrated VM, cleaned up with the destination's kit."""
    ref = dst.x.VM.get_by_uuid(uuid)
    dst.made.append(ref)
    return ref


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("state", ["Running", "Paused"])
def test_migrate_moves_the_vm(src, dst, live, state):
    vm = _running_vm(src, state)
    uuid = src.x.VM.get_uuid(vm)
    definition = _definition(src.x, vm)
    live_before = metrics(src.x, vm)
    metrics_ref = src.x.VM.get_metrics(vm)
    src_token = event_from(src.x, ["vm", "vm_metrics"], "", 0.0)["token"]
    dst_token = event_from(dst.x, ["vm", "vm_metrics"], "", 0.0)["token"]

    assert src.x.VM.migrate(vm, dst.server.url, live) == ""

    _gone_from(src, vm, uuid)
    moved = _adopt(dst, uuid)
    record = dst.x.VM.get_record(moved)
    assert record["power_state"] == state and int(record["domid"]) >= 1
    assert _definition(dst.x, moved) == definition
    live_after = metrics(dst.x, moved)
    for key in ("memory_actual", "VCPUs_number", "VCPUs_params", "start_time"):
        assert live_after[key] == live_before[key], key
    assert backend_domain(dst.server, uuid)["state"] == state

    # the source said the VM left, the destination that it arrived
    src_events = {(e["class"], e["ref"]): e["operation"]
                  for e in event_from(src.x, ["vm", "vm_metrics"], src_token, 5.0)["events"]}
    assert src_events[("vm", vm)] == "del"
    assert src_events[("vm_metrics", metrics_ref)] == "del"
    dst_events = event_from(dst.x, ["vm"], dst_token, 5.0)["events"]
    arrived = [e for e in dst_events if e["ref"] == moved]
    assert arrived and arrived[0]["operation"] == "add" and arrived[0]["snapshot"]["power_state"] == state


def test_migrate_there_and_back(src, dst):
    vm = _running_vm(src)
    uuid = src.x.VM.get_uuid(vm)
    definition = _definition(src.x, vm)
    src.x.VM.migrate(vm, dst.server.url, True)
    there = dst.x.VM.get_by_uuid(uuid)
    dst.x.VM.migrate(there, src.server.url, True)
    _gone_from(dst, there, uuid)
    back = src.x.VM.get_by_uuid(uuid)
    src.made.append(back)
    assert src.x.VM.get_power_state(back) == "Running"
    assert _definition(src.x, back) == definition


def _left_running(kit, vm, before):
    record, live, domain = before
    x = kit.x
    now = x.VM.get_record(vm)
    assert now["power_state"] == record["power_state"]
    assert {k: now[k] for k in DEFINITION} == {k: record[k] for k in DEFINITION}
    live_now = metrics(x, vm)
    for key in ("memory_actual", "VCPUs_number", "VCPUs_params", "start_time"):
        assert live_now[key] == live[key], key
    assert backend_domain(kit.server, now["uuid"])["state"] == record["power_state"]


def _snapshot(kit, vm):
    return kit.x.VM.get_record(vm), metrics(kit.x, vm), backend_domain(kit.server, kit.x.VM.get_uuid(vm))


def _migrate_failed(err, vm, url, reason):
    """VM_MIGRATE_FAILED [vm, source, destination, reason] (README, API notes)."""
    assert err[0] == "VM_MIGRATE_FAILED" and len(err) == 5, err
    assert err[1] == vm and err[2] and err[3] == url and reason in err[4], err


@pytest.mark.parametrize("live", [False, True])
def test_migrate_to_a_destination_with_that_name_fails_and_the_vm_keeps_running(src, dst, live):
    vm = _running_vm(src)
    name = src.x.VM.get_name_label(vm)
    dst.vm(name)  # a different VM with the same name on the destination
    before = _snapshot(src, vm)
    err = failure(src.x.VM.migrate, vm, dst.server.url, live)
    _migrate_failed(err, vm, dst.server.url, "VALUE_NOT_SUPPORTED")
    assert name in err[4]
    assert len(dst.x.VM.get_by_name_label(name)) == 1
    assert failure(dst.x.VM.get_by_uuid, src.x.VM.get_uuid(vm))[0] == "UUID_INVALID"
    _left_running(src, vm, before)


@pytest.mark.parametrize("live", [False, True])
def test_migrate_to_a_closed_port_fails_and_the_vm_keeps_running(src, live):
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    url = closed_port_url()
    _migrate_failed(failure(src.x.VM.migrate, vm, url, live), vm, url, "")
    _left_running(src, vm, before)


def test_the_password_of_the_url_stays_off_the_wire(src):
    vm = _running_vm(src)
    url = closed_port_url()
    err = failure(src.x.VM.migrate, vm, url.replace("http://", "http://root:s3cret@"), False)
    _migrate_failed(err, vm, url, "")
    assert not any("s3cret" in part for part in err)


@pytest.mark.parametrize("live", [False, True])
def test_a_failed_migration_leaves_the_same_domain_running(src, live):
    """The domain is not torn down and re-created: same domid, same domain on the host."""
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    failure(src.x.VM.migrate, vm, closed_port_url(), live)
    record, _live, domain = _snapshot(src, vm)
    assert record["domid"] == before[0]["domid"]
    assert domain == before[2]


def test_migrate_to_a_bad_url_changes_nothing(src):
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    for url in ("ftp://127.0.0.1/", "not a url", ""):
        err = failure(src.x.VM.migrate, vm, url, False)
        assert err[0] == "VALUE_NOT_SUPPORTED" and err[1] == "destination_url", err
    assert _snapshot(src, vm) == before


def test_migrate_to_a_host_without_the_memory_fails_and_the_vm_keeps_running(src, make_server, tmp_path):
    small = make_server("--memory", "1536", unix=False, state_dir=tmp_path / "small")
    vm = src.vm(unique("big"), memory_target=768 * MIB, memory_static_max=768 * MIB)
    src.x.VM.start(vm, False, False)
    before = _snapshot(src, vm)
    _migrate_failed(failure(src.x.VM.migrate, vm, small.url, True), vm, small.url, "HOST_NOT_ENOUGH_FREE_MEMORY")
    _left_running(src, vm, before)
    # nothing stays behind on the destination
    s = XenAPI.Session(small.url)
    s.xenapi.login_with_password("root", "")
    assert [r["name_label"] for r in s.xenapi.VM.get_all_records().values()] == ["Domain-0"]


def test_async_migrate_reports_progress(src, dst):
    vm = _running_vm(src)
    uuid = src.x.VM.get_uuid(vm)
    task = src.x.Async.VM.migrate(vm, dst.server.url, True)
    seen = []
    deadline = time.monotonic() + 20
    while True:
        record = src.x.task.get_record(task)
        seen.append(record["progress"])
        if record["status"] != "pending":
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert record["status"] == "success", record
    assert record["progress"] == 1.0 and record["error_info"] == []
    assert seen == sorted(seen)  # progress never goes back
    assert src.x.task.get_name_label(task) == "VM.migrate"
    _adopt(dst, uuid)
    assert dst.x.VM.get_power_state(dst.x.VM.get_by_uuid(uuid)) == "Running"


def test_async_migrate_failure_is_in_the_task(src):
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    task = src.x.Async.VM.migrate(vm, closed_port_url(), False)
    deadline = time.monotonic() + 20
    while src.x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    record = src.x.task.get_record(task)
    assert record["status"] == "failure" and record["error_info"][0] == "VM_MIGRATE_FAILED"
    assert record["error_info"][1] == vm
    _left_running(src, vm, before)


@contextlib.contextmanager
def fake_destination(answer):
    """A TCP server on loopback handing each connection to ``answer``; what it leaves open is
    closed at the end."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    conns, done = [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        done.set()
        thread.join(10)
        listener.close()
        for conn in conns:
            conn.close()


def black_hole():
    """A destination that takes connections and never answers; hangs up on all of them at the end."""
    return fake_destination(lambda conn: None)


def _finish(x, task, timeout):
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) in ("pending", "cancelling") and time.monotonic() < deadline:
        time.sleep(0.02)
    return x.task.get_record(task)


def test_during_a_live_migration_the_vm_runs_on_the_source(src):
    """Running means a domain: while the image travels, the source's record, metrics and host agree."""
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    with black_hole() as url:
        task = src.x.Async.VM.migrate(vm, url, True)
        time.sleep(0.3)
        assert src.x.task.get_status(task) == "pending"
        assert src.x.VM.get_power_state(vm) == "Running"
        assert backend_domain(src.server, before[0]["uuid"]) is not None, "the source has no domain any more"
        assert metrics(src.x, vm)["memory_actual"] == before[1]["memory_actual"]
    assert _finish(src.x, task, 10)["status"] == "failure"
    _left_running(src, vm, before)


def test_a_migration_to_a_destination_that_never_answers_can_be_cancelled(src):
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    with black_hole() as url:
        task = src.x.Async.VM.migrate(vm, url, False)
        time.sleep(0.2)
        src.x.task.cancel(task)
        record = _finish(src.x, task, 3)
        assert record["status"] in ("cancelled", "failure"), "the migration still waits for the destination"
        _left_running(src, vm, before)
    _finish(src.x, task, 10)


# -- destinations that are not xend-ext -----------------------------------------------------------

def impostor(reply: bytes):
    """A TCP server on loopback answering every connection with ``reply`` (whatever came in)."""

    def answer(conn):
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(1 << 20)
                conn.sendall(reply)
            except OSError:
                pass

    return fake_destination(answer)


HTML = b"<html><body>It works!</body></html>"
IMPOSTORS = {
    "html page": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(HTML), HTML),
    "truncated xml": b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 200\r\n\r\n<?xml version='1.0'?>",
    "not http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "not a struct": (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 112\r\n\r\n<?xml version='1.0'?>"
                     b"<methodResponse><params><param><value><string>hi</string></value></param></params>"
                     b"</methodResponse>"),
    "server error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(IMPOSTORS))
def test_a_destination_that_is_not_xend_ext_fails_as_vm_migrate_failed(src, kind):
    """Whatever the destination answers, the migration fails with VM_MIGRATE_FAILED (never
    INTERNAL_ERROR) and the VM runs on here, untouched."""
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    with impostor(IMPOSTORS[kind]) as url:
        err = failure(src.x.VM.migrate, vm, url, False)
    _migrate_failed(err, vm, url, "")
    _left_running(src, vm, before)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "http://127.0.0.1:99999/", "http:///",
                                 "127.0.0.1:9363", "http://a b/"])
def test_only_http_destinations_are_accepted(src, url):
    vm = _running_vm(src)
    before = _snapshot(src, vm)
    assert failure(src.x.VM.migrate, vm, url, False)[:3] == ["VALUE_NOT_SUPPORTED", "destination_url", url]
    _left_running(src, vm, before)


def test_a_group_migration_to_an_impostor_fails_member_by_member(src):
    """Each member's failure is VM_MIGRATE_FAILED (in the task's result); the call answers
    OPERATION_PARTIALLY_FAILED and the members run on here. A bad URL is refused before any moves."""
    vm = _running_vm(src)
    x = src.x
    group = x.VM_group.create({"name_label": unique("travellers"), "VMs": [vm]})
    try:
        before = _snapshot(src, vm)
        assert failure(x.VM_group.migrate, group, "ftp://127.0.0.1/", False)[:2] == [
            "VALUE_NOT_SUPPORTED", "destination_url"]
        with impostor(IMPOSTORS["html page"]) as url:
            task = x.Async.VM_group.migrate(group, url, False)
            while x.task.get_status(task) == "pending":
                time.sleep(0.05)
        assert x.task.get_error_info(task) == ["OPERATION_PARTIALLY_FAILED", "VM_group.migrate", vm]
        assert "VM_MIGRATE_FAILED" in x.task.get_result(task)
        _left_running(src, vm, before)
    finally:
        x.VM_group.destroy(group)
