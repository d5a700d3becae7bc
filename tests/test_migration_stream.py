"""Migration between two real servers on loopback, by streamed transfer (xend_ext/migration.py):
on every backend that migrates (sim: copy, libvirt's test driver: save and restore), single VMs
and groups; the destination checks every VM before anything moves (issue 17 item 7), a group is
never split and a scheduling domain never dissolved (item 8); images far larger than --max-body
stream with bounded memory; task.cancel and a failure at the destination leave nothing there."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import XenAPI
from poolkit import PoolKit
from vmkit import BOTH, MIB, backend_domain, failure, session, sim_only, unique

pytestmark = pytest.mark.backends(*BOTH)

BIG = ("--max-body", str(1 << 20), "--sim-image-bytes", str(1 << 20))  # images as large as the guest


def _servers(make_server, tmp_path, *extra, env=None):
    """Two servers with their own image directories: (source, destination)."""
    made = []
    for name in ("source", "destination"):
        server_args = (*extra, "--image-dir", str(tmp_path / f"{name}-images"))
        made.append(make_server(*server_args, unix=False, state_dir=tmp_path / name))
    return made


def _running(x, name=None, memory=128 * MIB, **fields):
    vm = x.VM.create({"name_label": name or unique("mig"), "memory_target": str(memory),
                      "memory_static_max": str(memory), **fields})
    x.VM.start(vm, False, False)
    return vm


def _wait(x, task, timeout=60.0):
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) in ("pending", "cancelling"):
        assert time.monotonic() < deadline, "the task did not finish"
        time.sleep(0.02)
    return x.task.get_record(task)


def _nothing_there(server, y, uuids=()):
    """The destination has no VM but Domain-0, no domain of the VMs, no half-received image."""
    assert [r["name_label"] for r in y.VM.get_all_records().values()] == ["Domain-0"]
    for uuid in uuids:
        assert backend_domain(server, uuid) is None
    images = Path(server.state_dir).parent / "destination-images"
    assert not list(images.glob(".import-*")), list(images.iterdir())
    for record in y.task.get_all_records().values():  # its import tasks ended
        assert record["status"] not in ("pending", "cancelling"), record


def _rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


# -- single VMs and groups on every backend --------------------------------------------------------

def test_a_vm_and_a_group_migrate_there_and_the_source_forgets_them(make_server, tmp_path, backend):
    src, dst = _servers(make_server, tmp_path)
    x, y = session(src).xenapi, session(dst).xenapi
    single = _running(x, VCPUs_max="2", VCPUs_at_startup="2")
    first, second = _running(x, order="0"), _running(x, order="1")
    x.VM.pause(second)
    group = x.VM_group.create({"name_label": unique("grp"), "VMs": [first, second]})
    uuids = {vm: x.VM.get_uuid(vm) for vm in (single, first, second)}

    x.VM.migrate(single, dst.url, False)
    x.VM_group.migrate(group, dst.url, False)

    for vm, uuid in uuids.items():
        assert failure(x.VM.get_record, vm)[0] == "HANDLE_INVALID"
        assert backend_domain(src, uuid) is None
        there = y.VM.get_by_uuid(uuid)
        assert y.VM.get_power_state(there) == ("Paused" if vm == second else "Running")
        assert backend_domain(dst, uuid) is not None
    assert y.VM.get_VCPUs_max(y.VM.get_by_uuid(uuids[single])) == "2"
    grouped = y.VM_group.get_by_name_label(x.VM_group.get_name_label(group))
    assert sorted(y.VM_group.get_VMs(grouped[0])) == sorted(y.VM.get_by_uuid(uuids[v]) for v in (first, second))


def test_a_host_taking_no_live_arrival_offers_none_and_a_live_migration_streams_the_image(make_server, tmp_path,
                                                                                           backend):
    """Without a hypervisor's own live migration (the sim; libvirt's test driver, which has none):
    VM.migrate_check offers nothing, a live arrival is refused before anything, and VM.migrate with
    live=true streams an image as ever."""
    src, dst = _servers(make_server, tmp_path)
    x, y = session(src).xenapi, session(dst).xenapi
    vm = _running(x)
    uuid = x.VM.get_uuid(vm)
    assert y.VM.migrate_check([]) == {} and "libvirt_migrate_uri" not in y.host.get_software_version(
        y.host.get_all()[0])
    record = {"uuid": "0e0e0e0e-0000-4000-8000-000000000001", "name_label": unique("arrival"),
              "memory_target": str(128 * MIB), "memory_static_max": str(128 * MIB)}
    refused = _wait(y, y.Async.VM.migrate_receive_live(record, False))
    assert refused["error_info"][:3] == ["VALUE_NOT_SUPPORTED", "live", "true"], refused
    done = _wait(x, x.Async.VM.migrate(vm, dst.url, True))
    assert done["status"] == "success", done["error_info"]
    assert int(done["other_config"]["migration_bytes"]) > 0 and f"migration_time:{uuid}" not in done["other_config"]
    assert y.VM.get_power_state(y.VM.get_by_uuid(uuid)) == "Running"


def test_a_group_member_whose_pool_the_destination_lacks_stops_the_group_before_anything_moves(
        make_server, tmp_path, backend):
    """Issue 17 item 7: the first member moved, then the second failed there with a misleading
    POOL_BAD_STATE deactivated, leaving the group split between the hosts."""
    src, dst = _servers(make_server, tmp_path)
    kit, y = PoolKit(src), session(dst).xenapi
    x = kit.x
    kit.active_pool([7], name="p1")
    first = _running(x, order="0")
    second = _running(x, order="1", pool_name="p1")
    group = x.VM_group.create({"name_label": unique("grp"), "VMs": [first, second]})
    domids = {vm: x.VM.get_domid(vm) for vm in (first, second)}
    task = x.Async.VM_group.migrate(group, dst.url, True)
    record = _wait(x, task)
    assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.migrate", first], record
    assert "pool_name p1" in record["result"] and x.VM.get_name_label(second) in record["result"]
    for vm in (first, second):
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domids[vm]
    assert sorted(x.VM_group.get_VMs(group)) == sorted([first, second])
    _nothing_there(dst, y)


def test_a_vm_lands_in_the_destinations_pool_of_the_same_name(make_server, tmp_path, backend):
    """Pools are matched by name (VM.migrate_check): the destination's "p1" is another pool, of
    another uuid, than the source's, and the domain is restored into it."""
    src, dst = _servers(make_server, tmp_path)
    there = PoolKit(dst)
    pool = there.active_pool([6], name="p1")
    kit = PoolKit(src)
    kit.active_pool([7], name="p1")
    vm = _running(kit.x, pool_name="p1")
    uuid = kit.x.VM.get_uuid(vm)

    kit.x.VM.migrate(vm, dst.url, False)

    y = there.x
    moved = y.VM.get_by_uuid(uuid)
    assert y.VM.get_power_state(moved) == "Running"
    assert y.VM.get_cpu_pool(moved) == [pool]
    assert backend_domain(dst, uuid)["pool"] == y.cpu_pool.get_uuid(pool)


def test_a_group_that_does_not_fit_in_the_destinations_memory_is_refused_whole(make_server, tmp_path, backend):
    """Each member alone fits, both together do not: the check counts them together."""
    src = make_server("--image-dir", str(tmp_path / "source-images"), unix=False, state_dir=tmp_path / "source")
    dst = make_server("--memory", "3072", "--image-dir", str(tmp_path / "destination-images"), unix=False,
                      state_dir=tmp_path / "destination")
    x, y = session(src).xenapi, session(dst).xenapi
    free = int(y.host.get_memory_free(y.host.get_all()[0]))
    members = [_running(x, memory=free * 3 // 5 // MIB * MIB, order=str(n)) for n in range(2)]
    group = x.VM_group.create({"name_label": unique("grp"), "VMs": members})
    record = _wait(x, x.Async.VM_group.migrate(group, dst.url, True))
    assert record["error_info"][0] == "OPERATION_PARTIALLY_FAILED"
    assert "HOST_NOT_ENOUGH_FREE_MEMORY" in record["result"]
    assert all(x.VM.get_power_state(vm) == "Running" for vm in members)
    _nothing_there(dst, y)


@sim_only("the fault-injecting wrapper counts the simulated host's actions here")
def test_a_member_failing_at_the_destination_brings_the_moved_ones_back(make_server, tmp_path):
    """The second member's restore fails there after the first runs there: the first is removed
    there and runs here again, so the group is never split."""
    from faultbackend import Faults

    faults = Faults(tmp_path / "faults")
    src = make_server("--image-dir", str(tmp_path / "source-images"), unix=False, state_dir=tmp_path / "source")
    dst_server = __import__("conftest").ServerProcess(tmp_path / "destination", "--image-dir",
                                                      str(tmp_path / "destination-images"), unix=False)
    dst_server.env.update(faults.env())
    dst = dst_server.start()
    try:
        x, y = session(src).xenapi, session(dst).xenapi
        first, second = _running(x, order="0"), _running(x, order="1")
        group = x.VM_group.create({"name_label": unique("grp"), "VMs": [first, second]})
        domids = {vm: x.VM.get_domid(vm) for vm in (first, second)}
        token = faults.arm(2)  # the destination's second action: the second member's restore
        record = _wait(x, x.Async.VM_group.migrate(group, dst.url, False))
        assert faults.calls(token)[:2] == ["restore", "restore FAILED"], faults.calls(token)
        assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.migrate", second], record
        assert "rolled back" in record["result"]
        for vm in (first, second):
            assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domids[vm]
        _nothing_there(dst, y, [x.VM.get_uuid(v) for v in (first, second)])
    finally:
        dst_server.stop()


# -- the stream ------------------------------------------------------------------------------------

@sim_only("the simulated host writes images as large as the guest (--sim-image-bytes)")
def test_an_image_far_larger_than_max_body_streams_with_bounded_memory(make_server, tmp_path):
    src, dst = _servers(make_server, tmp_path, *BIG)
    x, y = session(src).xenapi, session(dst).xenapi
    vm = _running(x, memory=512 * MIB)
    uuid = x.VM.get_uuid(vm)
    before = {s: _rss_mib(s.proc.pid) for s in (src, dst)}
    peak = dict(before)
    task = x.Async.VM.migrate(vm, dst.url, True)
    fractions = []
    while x.task.get_status(task) == "pending":
        for s in (src, dst):
            peak[s] = max(peak[s], _rss_mib(s.proc.pid))
        fractions.append(float(x.task.get_progress(task)))
        time.sleep(0.02)
    record = x.task.get_record(task)
    assert record["status"] == "success", record
    size = int(record["other_config"]["migration_size"])
    assert size > 512 * MIB and record["other_config"]["migration_bytes"] == str(size)  # 512 x --max-body
    assert fractions == sorted(fractions)
    for s in (src, dst):  # a 512 MiB image went through each: neither grew by more than a few chunks
        assert peak[s] - before[s] < 48, (s.url, before[s], peak[s])
    assert y.VM.get_power_state(y.VM.get_by_uuid(uuid)) == "Running"


class SlowLink:
    """A TCP relay on loopback passing at most ``rate`` bytes/s towards the server: a slow
    network (the stand-in), so a transfer can be caught half-way."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.split("//")[1].rstrip("/").rsplit(":", 1)
        self.upstream, self.rate = (host, int(port)), rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client = self.listener.accept()[0]
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.rate), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0), daemon=True).start()

    @staticmethod
    def _pump(src, dst, rate):
        """One direction; when either end goes, the relay's both sockets do (as a TCP path would)."""
        with contextlib.suppress(OSError):
            while data := src.recv(64 << 10):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        for s in (src, dst):  # closed, not only shut down: what still arrives is answered with a reset
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self):
        self.listener.close()
        for s in self.socks:
            s.close()


@sim_only("the simulated host writes images as large as the guest (--sim-image-bytes)")
def test_cancel_mid_transfer_stops_both_sides(make_server, tmp_path):
    src, dst = _servers(make_server, tmp_path, *BIG)
    x, y = session(src).xenapi, session(dst).xenapi
    vm = _running(x, memory=256 * MIB)
    domid, uuid = x.VM.get_domid(vm), x.VM.get_uuid(vm)
    link = SlowLink(dst.url, 24 << 20)
    try:
        task = x.Async.VM.migrate(vm, link.url, True)
        deadline = time.monotonic() + 30
        while int(x.task.get_other_config(task).get("migration_bytes", "0")) < 16 * MIB:
            assert x.task.get_status(task) == "pending" and time.monotonic() < deadline
            time.sleep(0.02)
        sent = int(x.task.get_other_config(task)["migration_bytes"])
        assert sent < int(x.task.get_other_config(task)["migration_size"])
        x.task.cancel(task)
        record = _wait(x, task, 10)
        assert record["status"] == "cancelled" and record["error_info"][0] == "TASK_CANCELLED", record
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domid
        deadline = time.monotonic() + 10  # the destination sees the stream end and cleans up
        while any(r["status"] == "pending" for r in y.task.get_all_records().values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        imports = [r for r in y.task.get_all_records().values() if r["name_label"] == "VM.migrate_receive"]
        assert [r["status"] for r in imports] == ["failure"] and "stopped after" in " ".join(imports[0]["error_info"])
        _nothing_there(dst, y, [uuid])
    finally:
        link.close()


@sim_only("the simulated host writes images as large as the guest (--sim-image-bytes)")
def test_cancel_of_a_group_migration_brings_the_member_already_there_back(make_server, tmp_path):
    """task.cancel while the second member streams: the first, running there already, is removed
    there and runs here again (the calls that undo the move go out although the migration was
    cancelled; they were refused before, which split the group)."""
    src, dst = _servers(make_server, tmp_path, *BIG)
    x, y = session(src).xenapi, session(dst).xenapi
    first, second = _running(x, memory=16 * MIB, order="0"), _running(x, memory=256 * MIB, order="1")
    group = x.VM_group.create({"name_label": unique("grp"), "VMs": [first, second]})
    uuids = [x.VM.get_uuid(vm) for vm in (first, second)]
    link = SlowLink(dst.url, 24 << 20)
    try:
        task = x.Async.VM_group.migrate(group, link.url, True)
        deadline = time.monotonic() + 30
        while int(x.task.get_other_config(task).get("migration_size", "0")) < 256 * MIB \
                or int(x.task.get_other_config(task)["migration_bytes"]) < 16 * MIB:  # the second, streaming
            assert x.task.get_status(task) == "pending" and time.monotonic() < deadline
            time.sleep(0.02)
        assert y.VM.get_power_state(y.VM.get_by_uuid(uuids[0])) == "Running"  # the first runs there
        x.task.cancel(task)
        record = _wait(x, task, 10)
        assert record["error_info"] == ["OPERATION_PARTIALLY_FAILED", "VM_group.migrate", second], record
        assert "rolled back" in record["result"] and "TASK_CANCELLED" in record["result"]
        assert [x.VM.get_power_state(vm) for vm in (first, second)] == ["Running", "Running"]
        deadline = time.monotonic() + 10  # the destination sees the stream end and cleans up
        while any(r["status"] == "pending" for r in y.task.get_all_records().values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _nothing_there(dst, y, uuids)
    finally:
        link.close()


@sim_only("the fault-injecting wrapper counts the simulated host's actions here")
def test_a_failure_at_the_destination_leaves_nothing_there(make_server, tmp_path):
    from faultbackend import Faults

    faults = Faults(tmp_path / "faults")
    src = make_server("--image-dir", str(tmp_path / "source-images"), unix=False, state_dir=tmp_path / "source")
    dst_server = __import__("conftest").ServerProcess(tmp_path / "destination", "--image-dir",
                                                      str(tmp_path / "destination-images"), unix=False)
    dst_server.env.update(faults.env())
    dst = dst_server.start()
    try:
        x, y = session(src).xenapi, session(dst).xenapi
        vm = _running(x)
        domid = x.VM.get_domid(vm)
        token = faults.arm(1)
        err = failure(x.VM.migrate, vm, dst.url, True)
        assert faults.calls(token) == ["restore FAILED"]
        assert err[0] == "VM_MIGRATE_FAILED" and "injected fault" in err[4], err
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domid
        _nothing_there(dst, y, [x.VM.get_uuid(vm)])
    finally:
        dst_server.stop()


def _raw(server, request: bytes) -> bytes:
    host, port = server.url.split("//")[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        return s.recv(4096)


def test_the_import_endpoint_checks_before_it_reads_a_byte(make_server, tmp_path, backend):
    """Session, task and length are checked at the end of the headers: a 10 GB body that never
    comes is refused at once (the answer arrives although no body byte was sent)."""
    src = make_server(unix=False)
    client = session(src)
    head = "PUT /import?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    assert _raw(src, head.format("session_id=OpaqueRef:bogus&task_id=x").encode()).startswith(b"HTTP/1.1 403")
    real = client._session  # noqa: SLF001 - the client's own session ref
    answer = _raw(src, head.format(f"session_id={real}&task_id=OpaqueRef:none").encode())
    assert answer.startswith(b"HTTP/1.1 404") and b"no import waits" in answer
    assert _raw(src, b"GET /import HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    chunked = f"PUT /import?session_id={real}&task_id=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _raw(src, chunked.encode()).startswith(b"HTTP/1.1 404")


@sim_only("the simulated host writes images as large as the guest (--sim-image-bytes)")
def test_cancel_of_the_import_task_at_the_destination_stops_the_source(make_server, tmp_path):
    src, dst = _servers(make_server, tmp_path, *BIG)
    x, y = session(src).xenapi, session(dst).xenapi
    vm = _running(x, memory=256 * MIB)
    domid, uuid = x.VM.get_domid(vm), x.VM.get_uuid(vm)
    link = SlowLink(dst.url, 24 << 20)
    try:
        task = x.Async.VM.migrate(vm, link.url, True)
        deadline = time.monotonic() + 30
        while True:
            imports = [(ref, r) for ref, r in y.task.get_all_records().items()
                       if r["name_label"] == "VM.migrate_receive" and r["status"] == "pending"]
            if imports and int(imports[0][1]["other_config"].get("migration_bytes", "0")) >= 16 * MIB:
                break
            assert time.monotonic() < deadline and x.task.get_status(task) == "pending"
            time.sleep(0.02)
        y.task.cancel(imports[0][0])
        record = _wait(x, task, 15)
        assert record["status"] == "failure" and record["error_info"][0] == "VM_MIGRATE_FAILED", record
        assert "TASK_CANCELLED" in record["error_info"][4], record
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domid
        assert y.task.get_status(imports[0][0]) == "cancelled"
        _nothing_there(dst, y, [uuid])
    finally:
        link.close()


def test_an_https_destination_is_verified(make_server, tmp_path, backend):
    """The image goes over TLS to a destination whose certificate the source trusts
    (REQUESTS_CA_BUNDLE); one it does not trust is never sent anything."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)
    dst = make_server("--tls-cert", str(cert_file), "--tls-key", str(key_file), "--image-dir",
                      str(tmp_path / "destination-images"), unix=False, state_dir=tmp_path / "destination")
    assert dst.url.startswith("https://")
    for trusted in (False, True):
        src = __import__("conftest").ServerProcess(tmp_path / f"source-{trusted}", unix=False, host=backend)
        if trusted:
            src.env["REQUESTS_CA_BUNDLE"] = str(ca_file)
        src.start()
        try:
            x = session(src).xenapi
            vm = _running(x)
            if trusted:
                uuid = x.VM.get_uuid(vm)
                x.VM.migrate(vm, dst.url, True)
                y = XenAPI.Session(dst.url, ignore_ssl=True).xenapi
                y.login_with_password("root", "")
                assert y.VM.get_power_state(y.VM.get_by_uuid(uuid)) == "Running"
            else:
                err = failure(x.VM.migrate, vm, dst.url, True)
                assert err[0] == "VM_MIGRATE_FAILED" and "CERTIFICATE_VERIFY_FAILED" in err[4], err
                assert x.VM.get_power_state(vm) == "Running"
        finally:
            src.stop()
