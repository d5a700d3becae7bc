"""Liveness and HA of a pool of hosts on etcd (issue 20, step 4): three real etcd members and
three real servers (simulated hosts) on loopback, each holding an etcd lease of LEASE seconds;
one server is frozen (SIGSTOP) or killed (SIGKILL) and the others are asked, through the official
client, what they make of its host and its VMs. The backends are read from the simulated hosts'
state files."""

from __future__ import annotations

import json
import signal
import time

import pytest
from etcdkit import Pool, until
from vmkit import backend_domain, event_from, failure, new_vm, session, token_now, unique
from xmkit import ok, xm

LEASE = 2  # seconds; etcd's minimum with etcdkit's 500 ms election timeout is 1
SLACK = 1.5  # etcd looks for expired leases every 500 ms; the watch, the poll, a busy machine


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = Pool(tmp_path_factory.mktemp("live"), 3, "--cluster-lease", str(LEASE)).start()
    yield p
    p.stop()


def clients(pool):
    return [session(s).xenapi for s in pool.servers]


def own_host(server) -> str:
    s = session(server)
    return s.xenapi.session.get_this_host(s._session)


def views(xs, call, *args):
    out = []
    for x in xs:
        try:
            out.append(call(x)(*args))
        except Exception as exc:  # noqa: BLE001 - a host that does not answer says so in the list
            out.append(type(exc).__name__)
    return out


def running_copies(pool, uuid) -> list[int]:
    """The servers whose simulated hypervisor runs (or has paused) the domain."""
    found = []
    for i, server in enumerate(pool.servers):
        domain = backend_domain(server, uuid)
        if domain is not None and domain["state"] in ("Running", "Paused"):
            found.append(i)
    return found


def ha(x, on: bool) -> None:
    x.pool.set_ha_enabled(x.pool.get_all()[0], on)


def test_a_frozen_host_is_shown_not_live_within_its_lease_then_live_again(pool):
    xa, xb, xc = clients(pool)
    hosts = [own_host(s) for s in pool.servers]
    assert until(lambda: all(views([xa, xb, xc], lambda x: x.host.get_live, h) == [True] * 3 for h in hosts))
    ha(xa, False)
    vm = new_vm(xb, unique("frozen"))
    xb.VM.start_on(vm, hosts[1], False, False)
    assert until(lambda: views([xa, xc], lambda x: x.VM.get_power_state, vm) == ["Running"] * 2)
    token = token_now(xc, ["host"])
    pool.servers[1].proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert until(lambda: views([xa, xc], lambda x: x.host.get_live, hosts[1]) == [False] * 2, LEASE + SLACK)
        seen_after = time.monotonic() - stopped
        # the VMs of a host that is not live: nobody knows whether they run
        assert until(lambda: views([xa, xc], lambda x: x.VM.get_power_state, vm) == ["Unknown"] * 2)
        assert xa.VM.get_resident_on(vm) == hosts[1]
        assert views([xa, xc], lambda x: x.host.get_live, hosts[0]) == [True] * 2
        events = event_from(xc, ["host"], token, 2.0)["events"]
        assert any(e["ref"] == hosts[1] and e["operation"] == "mod" and e["snapshot"]["live"] is False
                   for e in events), events
        token = event_from(xc, ["host"], token, 0.1)["token"]
        # xm through any live host says the same
        rows = {line.split()[1]: line.split() for line in ok(xm(pool.servers[0], "host-list")).splitlines()[1:]}
        uuids = [xa.host.get_uuid(h) for h in hosts]
        assert [rows[u][3] for u in uuids] == ["y", "n", "y"]
        assert rows[uuids[1]][2] == pool.servers[1].url and rows[uuids[1]][4:] == ["1", "-"]
        name = xa.VM.get_name_label(vm)
        listed = [line.split() for line in ok(xm(pool.servers[2], "list", name)).splitlines()[1:]]
        assert listed[0][0] == name and listed[0][4] == "??????"
        # an action on it is not forwarded to a host that is not live: refused at once
        asked = time.monotonic()
        assert failure(xa.VM.pause, vm)[:2] == ["HOST_OFFLINE", hosts[1]]
        assert time.monotonic() - asked < 5  # not the 900 s a forwarded call may wait for its answer
        # placement passes it over, even for a VM whose affinity host it is
        drawn = new_vm(xa, unique("drawn"), affinity=hosts[1])
        xa.VM.start(drawn, False, False)
        assert xa.VM.get_resident_on(drawn) in (hosts[0], hosts[2])
    finally:
        pool.servers[1].proc.send_signal(signal.SIGCONT)
    assert seen_after <= LEASE + SLACK
    # back: it takes a new lease, and its VM shows what its hypervisor says again
    assert until(lambda: views([xa, xb, xc], lambda x: x.host.get_live, hosts[1]) == [True] * 3, 10)
    assert until(lambda: views([xa, xb, xc], lambda x: x.VM.get_power_state, vm) == ["Running"] * 3, 10)
    assert running_copies(pool, xa.VM.get_uuid(vm)) == [1]
    events = event_from(xc, ["host"], token, 2.0)["events"]
    assert any(e["ref"] == hosts[1] and e["snapshot"]["live"] is True for e in events), events
    assert any("this host's lease expired" in line for line in pool.servers[1].log)


def test_without_ha_a_killed_hosts_auto_power_on_vm_is_not_restarted(tmp_path):
    pool = Pool(tmp_path, 3, "--cluster-lease", str(LEASE)).start()
    try:
        xa, xb, xc = clients(pool)
        hosts = [own_host(s) for s in pool.servers]
        vm = new_vm(xc, unique("noha"), auto_power_on=True)
        xc.VM.start_on(vm, hosts[2], False, False)
        uuid = xa.VM.get_uuid(vm)
        assert until(lambda: views([xa, xb], lambda x: x.VM.get_power_state, vm) == ["Running"] * 2)
        pool.servers[2].kill9()
        assert until(lambda: views([xa, xb], lambda x: x.host.get_live, hosts[2]) == [False] * 2, LEASE + SLACK)
        assert until(lambda: views([xa, xb], lambda x: x.VM.get_power_state, vm) == ["Unknown"] * 2)
        # the mark is the one claim a lost host's VM gets: nothing restarts it afterwards
        assert views([xa, xb], lambda x: x.VM.get_resident_on, vm) == [hosts[2]] * 2
        assert running_copies(pool, uuid) == [2]  # the dead server's simulated host, as it was left
        # it comes back: its VM is running again, there
        pool.servers[2].url = ""
        pool.servers[2].start()
        xc = session(pool.servers[2]).xenapi
        assert until(lambda: views([xa, xb, xc], lambda x: x.VM.get_power_state, vm) == ["Running"] * 3, 10)
        assert views([xa, xb, xc], lambda x: x.VM.get_resident_on, vm) == [hosts[2]] * 3
        assert views([xa, xb, xc], lambda x: x.host.get_live, hosts[2]) == [True] * 3
        assert running_copies(pool, uuid) == [2]
    finally:
        pool.stop()


def test_with_ha_a_killed_hosts_auto_power_on_vm_runs_on_exactly_one_other_host(tmp_path):
    pool = Pool(tmp_path, 3, "--cluster-lease", str(LEASE)).start()
    try:
        xa, xb, xc = clients(pool)
        hosts = [own_host(s) for s in pool.servers]
        ha(xb, True)
        auto = new_vm(xc, unique("ha"), auto_power_on=True)
        plain = new_vm(xc, unique("plain"))
        for vm in (auto, plain):
            xc.VM.start_on(vm, hosts[2], False, False)
        uuid = xa.VM.get_uuid(auto)
        assert until(lambda: views([xa, xb], lambda x: x.VM.get_power_state, auto) == ["Running"] * 2)
        pool.servers[2].kill9()
        assert until(lambda: views([xa, xb], lambda x: x.host.get_live, hosts[2]) == [False] * 2, LEASE + SLACK)
        # restarted once, on host A or B, and every live host says the same
        assert until(lambda: set(views([xa, xb], lambda x: x.VM.get_resident_on, auto)) <= {hosts[0], hosts[1]}
                     and views([xa, xb], lambda x: x.VM.get_power_state, auto) == ["Running"] * 2)
        where = xa.VM.get_resident_on(auto)
        assert views([xa, xb], lambda x: x.VM.get_resident_on, auto) == [where] * 2
        # the dead server's simulated host still lists its copy: it is dead, fenced
        assert sorted(running_copies(pool, uuid)) == sorted([hosts.index(where), 2])
        # a VM that is not auto_power_on is left unknown on its host
        assert until(lambda: views([xa, xb], lambda x: x.VM.get_power_state, plain) == ["Unknown"] * 2)
        restarts = [line for s in pool.servers[:2] for line in s.log if "HA: VM" in line and " restarted on " in line]
        assert len(restarts) == 1 and restarts[0].endswith(xa.host.get_uuid(where)), restarts
        # the killed host returns: it stops its copy and does not take the VM back
        pool.servers[2].url = ""
        pool.servers[2].start()
        xc = session(pool.servers[2]).xenapi
        assert views([xa, xb, xc], lambda x: x.VM.get_resident_on, auto) == [where] * 3
        assert views([xa, xb, xc], lambda x: x.VM.get_power_state, auto) == ["Running"] * 3
        assert running_copies(pool, uuid) == [hosts.index(where)]
        assert any("stopping this host's copy" in line for line in pool.servers[2].log)
        assert until(lambda: views([xa, xb, xc], lambda x: x.VM.get_power_state, plain) == ["Running"] * 3, 10)
    finally:
        pool.stop()


def test_xm_lists_the_pools_hosts_and_turns_ha_on_and_off(pool):
    xs = clients(pool)
    hosts = [own_host(s) for s in pool.servers]
    out = ok(xm(pool.servers[1], "host-list"))
    header, *rows = out.splitlines()
    assert header.split() == ["Name", "UUID", "Address", "Live", "VMs", "Free(M)"]
    by_uuid = {row.split()[1]: row.split() for row in rows}
    assert sorted(by_uuid) == sorted(xs[0].host.get_uuid(h) for h in hosts)
    for server, h in zip(pool.servers, hosts, strict=True):
        row = by_uuid[xs[0].host.get_uuid(h)]
        assert row[2:4] == [server.url, "y"]
        running = [v for v in xs[0].host.get_resident_VMs(h) if not xs[0].VM.get_is_control_domain(v)]
        assert int(row[4]) == len(running)
        assert int(row[5]) == int(xs[0].host.get_memory_free(h)) >> 20
    for server, h in zip(pool.servers, hosts, strict=True):  # xm info: the host of the server it asks
        assert json.loads(ok(xm(server, "info", "--json")))["uuid"] == xs[0].host.get_uuid(h)
    ok(xm(pool.servers[2], "pool-ha-enable"))
    assert until(lambda: views(xs, lambda x: x.pool.get_ha_enabled, xs[0].pool.get_all()[0]) == [True] * 3)
    ok(xm(pool.servers[0], "pool-ha-disable"))
    assert until(lambda: views(xs, lambda x: x.pool.get_ha_enabled, xs[0].pool.get_all()[0]) == [False] * 3)


class Cuttable:
    """A TCP relay in front of each etcd member for one server (a stand-in for a network cut: the
    test's only fault injection): ``cut()`` drops every connection and refuses new ones until
    ``mend()``; the other servers keep talking to etcd directly."""

    def __init__(self, endpoints: str) -> None:
        import socket
        import threading

        self.cut_off = threading.Event()
        self.conns: list = []
        self.listeners = []
        ports = []
        for endpoint in endpoints.split(","):
            host, port = endpoint.rsplit(":", 1)
            listener = socket.create_server(("127.0.0.1", 0))
            ports.append(listener.getsockname()[1])
            self.listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener, (host, int(port))), daemon=True).start()
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in ports)

    def _accept(self, listener, upstream) -> None:
        import socket
        import threading

        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                conn.close()
                continue
            try:
                far = socket.create_connection(upstream)
            except OSError:
                conn.close()
                continue
            self.conns += [conn, far]
            for a, b in ((conn, far), (far, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.cut_off.set()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def mend(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.cut()
        for listener in self.listeners:
            listener.close()


def test_with_ha_a_host_cut_from_etcd_fences_its_vm_before_the_pool_restarts_it(tmp_path):
    """Host C loses etcd (its relay is cut) but its server runs on: it stops its auto_power_on VM
    before its lease can expire; A or B restarts it; when C reaches etcd again it is live again
    and does not run the VM."""
    import datetime as dt

    from conftest import ServerProcess

    pool = Pool(tmp_path, 2, "--cluster-lease", str(LEASE))
    pool.etcd.start()
    relay = Cuttable(pool.etcd.endpoints)
    pool.servers.append(ServerProcess(tmp_path / "host2", "--cluster", relay.endpoints, "--cluster-lease", str(LEASE),
                                      unix=False))
    try:
        for server in pool.servers:
            server.start()
        xa, xb, xc = clients(pool)
        hosts = [own_host(s) for s in pool.servers]
        ha(xa, True)
        vm = new_vm(xc, unique("cut"), auto_power_on=True)
        assert until(lambda: xc.pool.get_ha_enabled(xc.pool.get_all()[0]))
        xc.VM.start_on(vm, hosts[2], False, False)
        uuid = xa.VM.get_uuid(vm)
        relay.cut()
        assert until(lambda: views([xa, xb], lambda x: x.host.get_live, hosts[2]) == [False] * 2, LEASE + SLACK)
        assert until(lambda: views([xa, xb], lambda x: x.VM.get_power_state, vm) == ["Running"] * 2
                     and xa.VM.get_resident_on(vm) in hosts[:2])
        where = hosts.index(xa.VM.get_resident_on(vm))
        assert running_copies(pool, uuid) == [where]  # C's copy was stopped by C itself

        def at(server, text):
            line = next(line for line in server.log if text in line)
            return dt.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))

        restarter = next(s for s in pool.servers[:2] if any(" restarted on " in line for line in s.log))
        assert at(pool.servers[2], "fencing: stopping VM") < at(restarter, " restarted on ")
        relay.mend()
        assert until(lambda: views([xa, xb, xc], lambda x: x.host.get_live, hosts[2]) == [True] * 3, 15)
        assert until(lambda: views([xa, xb, xc], lambda x: x.VM.get_resident_on, vm) == [hosts[where]] * 3, 10)
        assert running_copies(pool, uuid) == [where]
    finally:
        pool.stop()
        relay.close()
