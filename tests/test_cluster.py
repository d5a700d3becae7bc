"""A pool of hosts on etcd (issue 20): three real etcd members and three real servers (simulated
hosts) on loopback, driven by the official client through each host."""

from __future__ import annotations

import threading
import time

import pytest
import XenAPI
from etcdkit import Pool, until
from vmkit import event_from, new_vm, session, token_now, unique


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = Pool(tmp_path_factory.mktemp("pool")).start()
    yield p
    p.stop()


def clients(pool):
    return [session(s).xenapi for s in pool.servers]


def names_everywhere(xs, vm):
    """The VM's name_label as each host answers (None where it is not known yet)."""
    out = []
    for x in xs:
        try:
            out.append(x.VM.get_name_label(vm))
        except XenAPI.Failure:
            out.append(None)
    return out


def test_a_write_through_any_host_is_read_back_on_every_host(pool):
    xs = clients(pool)
    made = {new_vm(x, unique("pool")): i for i, x in enumerate(xs)}
    for vm in made:
        assert until(lambda vm=vm: None not in names_everywhere(xs, vm))
    vm = next(iter(made))
    xs[1].VM.set_name_description(vm, "changed through host 1")
    assert until(lambda: {x.VM.get_name_description(vm) for x in xs} == {"changed through host 1"})
    xs[2].VM.destroy(vm)
    assert until(lambda: names_everywhere(xs, vm) == [None, None, None])


def test_event_from_on_one_host_sees_changes_made_through_another_once_in_order(pool):
    xa, _, xc = clients(pool)
    token = token_now(xc, ["VM"])
    vms = [new_vm(xa, unique("ev")) for _ in range(3)]
    xa.VM.set_name_description(vms[0], "second change")
    seen: list[dict] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            e["ref"] == vms[0] and e["snapshot"]["name_description"] == "second change" for e in seen):
        reply = event_from(xc, ["VM"], token, 2.0)
        seen += reply["events"]
        token = reply["token"]
    adds = [e for e in seen if e["operation"] == "add"]
    # one each, in the order of their last change (event.from coalesces an object's changes)
    assert [e["ref"] for e in adds] in (vms, [vms[1], vms[2], vms[0]])
    later = [e for e in seen if e["operation"] != "add"]  # the change, if it came in a later reply
    assert [(e["ref"], e["operation"]) for e in later] in ([], [(vms[0], "mod")])
    assert seen[-1]["snapshot"]["name_description"] == "second change" or \
        adds[0]["snapshot"]["name_description"] == "second change"
    assert [int(e["id"]) for e in seen] == sorted(int(e["id"]) for e in seen)
    assert event_from(xc, ["VM"], token, 0.2)["events"] == []  # nothing twice


def test_concurrent_changes_of_one_object_through_two_hosts_lose_no_update(pool):
    """Each host adds its own keys to the same VM's other_config: a host's stale copy of the VM
    never overwrites the other's keys (the transaction compares the mod revision); a refused
    change says so and is made again by its client."""
    xs = clients(pool)
    vm = new_vm(xs[0], unique("cas"))
    assert until(lambda: None not in names_everywhere(xs, vm))
    acknowledged: list[str] = []
    conflicts = []

    def writer(i):
        x = session(pool.servers[i]).xenapi
        for n in range(25):
            key = f"h{i}-{n}"
            while True:
                try:
                    x.VM.add_to_other_config(vm, key, "v")
                    acknowledged.append(key)
                    break
                except XenAPI.Failure as exc:
                    assert exc.details[0] == "STORE_WRITE_FAILED", exc.details
                    conflicts.append(exc.details)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(acknowledged) == 75
    for x in xs:
        assert until(lambda x=x: set(x.VM.get_other_config(vm)) >= set(acknowledged)), set(acknowledged) - set(
            x.VM.get_other_config(vm))
    assert all("another host" in d[1] for d in conflicts)


def test_a_server_that_joins_later_reads_the_pool(pool, tmp_path):
    from conftest import ServerProcess

    vm = new_vm(session(pool.servers[0]).xenapi, unique("late"))
    late = ServerProcess(tmp_path / "late", "--cluster", pool.etcd.endpoints, unix=False).start()
    try:
        assert session(late).xenapi.VM.get_name_label(vm).startswith("late")
    finally:
        late.stop()


def test_an_unreachable_or_malformed_cluster_refuses_the_start_in_one_line(tmp_path):
    import subprocess
    import sys

    from etcdkit import free_ports

    (port,) = free_ports(1)
    for endpoints, said in ((f"127.0.0.1:{port}", "cannot reach etcd"), ("127.0.0.1", "is not HOST:PORT")):
        done = subprocess.run([sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(tmp_path / "s"),
                               "--listen", "127.0.0.1:0", "--unix", "none", "--cluster", endpoints],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0], done.stderr


def test_kill_9_of_an_etcd_member_and_a_server_during_16_client_writes_loses_no_acknowledged_change(tmp_path):
    """16 clients create VMs through the three hosts; one etcd member and then one server are
    killed with SIGKILL meanwhile. Every creation that was answered is on the surviving hosts (and
    on the killed one once it is back), and the pool goes on taking changes."""
    pool = Pool(tmp_path).start()
    try:
        acknowledged: list[str] = []
        stop = threading.Event()

        def client(i):
            server = pool.servers[i % 3]
            x = session(server).xenapi
            n = 0
            while not stop.is_set():
                try:
                    acknowledged.append(new_vm(x, f"c{i}-{n}"))
                except (OSError, XenAPI.Failure, ConnectionError):
                    if not server.alive():  # its host is gone: go on through the next one
                        server = pool.servers[(i + 1) % 3]
                        x = session(server).xenapi
                n += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        until(lambda: len(acknowledged) >= 50, 20)
        pool.etcd.members[0].kill9()  # the member every server talks to first
        before = len(acknowledged)
        until(lambda: len(acknowledged) >= before + 50, 20)
        pool.servers[2].kill9()
        before = len(acknowledged)
        until(lambda: len(acknowledged) >= before + 50, 20)
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acknowledged) >= before + 50  # the pool went on after both kills
        # the surviving servers did lose the member they used, and watched again through another
        assert all(any("etcd watch:" in line for line in s.log) for s in pool.servers[:2])
        for server in pool.servers[:2]:
            x = session(server).xenapi
            assert until(lambda x=x: set(acknowledged) <= set(x.VM.get_all()), 10)
        pool.servers[2].url = ""  # it listens on a new port
        pool.servers[2].start()
        x = session(pool.servers[2]).xenapi
        assert set(acknowledged) <= set(x.VM.get_all())
    finally:
        pool.stop()


def test_a_server_whose_watch_fell_behind_a_compaction_catches_up(tmp_path):
    """Host C is stopped (SIGSTOP) while host A makes changes, etcd compacts its history past them
    and the member C watched through dies: C's new watch cannot start where it stopped, so it
    reads the pool again and applies what differs, each change once."""
    import json
    import signal

    pool = Pool(tmp_path).start()
    try:
        xa, _, xc = clients(pool)
        kept, gone = new_vm(xa, unique("kept")), new_vm(xa, unique("gone"))
        assert until(lambda: None not in names_everywhere([xc], gone))
        token = token_now(xc, ["VM"])
        pool.servers[2].proc.send_signal(signal.SIGSTOP)
        try:
            made = new_vm(xa, unique("made"))
            xa.VM.set_name_description(kept, "changed while C slept")
            xa.VM.destroy(gone)
            status = json.loads(pool.etcd.etcdctl("endpoint", "status", "-w", "json").stdout)
            revision = max(int(s["Status"]["header"]["revision"]) for s in status)
            assert pool.etcd.etcdctl("compact", str(revision)).returncode == 0
            pool.etcd.members[0].kill9()
        finally:
            pool.servers[2].proc.send_signal(signal.SIGCONT)
        caught_up = until(lambda: names_everywhere([xc], gone) == [None] and xc.VM.get_name_description(kept) != "", 20)
        assert caught_up, "\n".join(pool.servers[2].log[-20:])
        assert xc.VM.get_name_description(kept) == "changed while C slept"
        assert xc.VM.get_name_label(made).startswith("made")
        events = []
        while True:
            reply = event_from(xc, ["VM"], token, 0.5)
            if not reply["events"]:
                break
            events += reply["events"]
            token = reply["token"]
        assert sorted((e["ref"], e["operation"]) for e in events) == sorted(
            [(made, "add"), (kept, "mod"), (gone, "del")])
        assert any("reading the pool again" in line for line in pool.servers[2].log)
    finally:
        pool.stop()
