"""Hosts of a pool (issue 20): each server its own host, forwarding to the host an object is on,
placement across hosts. Three real etcd members and three real servers (simulated hosts of 4
pCPUs) on loopback, driven by the official client through each host."""

from __future__ import annotations

import threading
import time
import xmlrpc.client

import pytest
import XenAPI
from etcdkit import Pool, until
from test_cluster import names_everywhere
from vmkit import backend_domain, event_from, failure, new_vm, session, token_now, unique


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = Pool(tmp_path_factory.mktemp("hosts"), 3, "--cpus", "4").start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def sessions(pool):
    return [session(s) for s in pool.servers]


@pytest.fixture(scope="module")
def xs(sessions):
    return [s.xenapi for s in sessions]


@pytest.fixture(scope="module")
def mine(sessions):
    """Each server's own host, in the servers' order."""
    return [s.xenapi.session.get_this_host(s._session) for s in sessions]


def test_each_server_is_its_own_host_with_its_domain_0_pool_0_and_cpus(pool, xs, mine):
    assert len(set(mine)) == 3
    for x in xs:  # every host answers the same about every host
        assert until(lambda x=x: sorted(x.host.get_all()) == sorted(mine))
        assert until(lambda x=x: [x.host.get_address(h) for h in mine] == [s.url for s in pool.servers])
    for x in xs:
        controls = [vm for vm, r in x.VM.get_all_records().items() if r["is_control_domain"]]
        assert sorted(x.VM.get_resident_on(vm) for vm in controls) == sorted(mine)
        pool0s = [p for p in x.cpu_pool.get_all() if x.cpu_pool.get_name_label(p) == "Pool-0"]
        assert sorted(x.cpu_pool.get_resident_on(p) for p in pool0s) == sorted(mine)
        for p in pool0s:  # each host's Pool-0 holds that host's four pCPUs, as seen from any host
            assert x.cpu_pool.get_activated(p)
            cpus = x.cpu_pool.get_host_CPUs(p)
            assert {x.host_cpu.get_host(c) for c in cpus} == {x.cpu_pool.get_resident_on(p)}
            assert sorted(int(x.host_cpu.get_number(c)) for c in cpus) == [0, 1, 2, 3]
            assert all(x.host_cpu.get_cpu_pool(c) == [p] for c in cpus)
        for h in mine:
            assert len(x.host.get_host_CPUs(h)) == 4
            assert x.host.get_free_cpus(h) == "0"
    # a host's figures read through another host are the ones it publishes itself
    for i, h in enumerate(mine):
        own = xs[i].host.get_record(h)
        for x in xs:
            other = x.host.get_record(h)
            for name in ("memory_total", "memory_free", "free_cpus", "capabilities"):
                assert other[name] == own[name], name


def on_host(pool, i, x, vm):
    """The VM's domain as host ``i``'s own hypervisor has it (its simulated host's state file)."""
    return backend_domain(pool.servers[i], x.VM.get_uuid(vm))


def test_a_call_on_another_hosts_vm_is_made_by_that_host_and_answered_unchanged(pool, xs, mine):
    xa, xb, xc = xs
    vm = new_vm(xa, unique("fwd"))
    assert until(lambda: None not in names_everywhere(xs, vm))
    xb.VM.start(vm, False, False)  # started through B, on B
    assert xb.VM.get_resident_on(vm) == mine[1]
    assert until(lambda: xc.VM.get_resident_on(vm) == mine[1])
    xc.VM.pause(vm)  # through C: made by B, and C's next read already sees it
    assert xc.VM.get_power_state(vm) == "Paused"
    assert on_host(pool, 1, xa, vm)["state"] == "Paused"
    assert on_host(pool, 2, xa, vm) is None and on_host(pool, 0, xa, vm) is None
    assert failure(xc.VM.pause, vm)[:2] == ["VM_BAD_POWER_STATE", vm]  # B's error, unchanged
    task = xa.Async.VM.unpause(vm)  # a task on A, following B's
    assert until(lambda: xa.task.get_status(task) != "pending", 20)
    assert xa.task.get_status(task) == "success", xa.task.get_error_info(task)
    assert xa.VM.get_power_state(vm) == "Running" and on_host(pool, 1, xa, vm)["state"] == "Running"
    metrics = xa.VM.get_metrics(vm)  # the live state: B's answer, through A
    assert xa.VM_metrics.get_memory_actual(metrics) == xb.VM_metrics.get_memory_actual(metrics) != "0"
    xc.VM.pin_VCPU(vm, "0", "2", "perm")
    assert on_host(pool, 1, xa, vm)["pins"] == [["pin", "0", "2"]]
    xc.VM.suspend(vm)  # its image stays on B, and so does the VM: resumed by B, through A
    assert xa.VM.get_power_state(vm) == "Suspended" and xa.VM.get_resident_on(vm) == mine[1]
    xa.VM.resume(vm, False, False)
    assert xa.VM.get_power_state(vm) == "Running" and on_host(pool, 1, xa, vm)["state"] == "Running"
    xc.VM.hard_shutdown(vm)
    assert xc.VM.get_power_state(vm) == "Halted" and on_host(pool, 1, xa, vm) is None
    xa.VM.destroy(vm)


def test_a_call_on_another_hosts_cpu_pool_is_made_by_that_host(pool, xs, mine):
    xa, xb, _ = xs
    pool0 = next(p for p in xa.host.get_resident_cpu_pools(mine[1]) if xa.cpu_pool.get_name_label(p) == "Pool-0")
    cpu3 = next(c for c in xa.host.get_host_CPUs(mine[1]) if xa.host_cpu.get_number(c) == "3")
    spare = xb.cpu_pool.create({"name_label": unique("spare"), "ncpu": "1"})  # defined on B
    assert until(lambda: spare in xa.cpu_pool.get_all())
    assert failure(xa.cpu_pool.activate, spare) == ["INSUFFICIENT_CPUS", "1", "0"]  # B has no free pCPU
    xa.cpu_pool.remove_host_CPU_live(pool0, cpu3)  # through A, on B's hypervisor
    assert xb.host.get_free_cpus(mine[1]) == "1" and xa.host.get_free_cpus(mine[0]) == "0"
    xa.cpu_pool.activate(spare)
    assert xa.cpu_pool.get_activated(spare) and xb.cpu_pool.get_host_CPUs(spare) == [cpu3]
    assert until(lambda: xa.host_cpu.get_cpu_pool(cpu3) == [spare])  # as B published it
    xa.cpu_pool.deactivate(spare)
    xa.cpu_pool.add_host_CPU_live(pool0, cpu3)
    assert xb.host.get_free_cpus(mine[1]) == "0"
    xa.cpu_pool.destroy(spare)


def test_a_pool_login_needs_the_pools_secret(pool):
    reply = xmlrpc.client.ServerProxy(pool.servers[0].url).session.pool_login("guess", "root", "pool-admin", "")
    assert reply == {"Status": "Failure", "ErrorDescription": ["SESSION_AUTHENTICATION_FAILED"]}
    audit = until(lambda: [line for line in (pool.servers[0].state_dir / "audit.log").read_text().splitlines()
                           if "call=session.pool_login" in line])
    assert audit and "user=root" in audit[-1] and "guess" not in audit[-1]  # the user, never the secret


def host_index(mine, host):
    return mine.index(host)


def test_a_vm_started_through_a_lands_on_its_affinity_host_b_and_is_stopped_through_c(pool, xs, mine):
    xa, xb, xc = xs
    vm = new_vm(xa, unique("aff"), affinity=mine[1])
    xa.VM.start(vm, False, False)
    assert xa.VM.get_resident_on(vm) == mine[1] and xa.VM.get_power_state(vm) == "Running"
    assert on_host(pool, 1, xa, vm)["state"] == "Running"
    assert on_host(pool, 0, xa, vm) is None and on_host(pool, 2, xa, vm) is None
    assert until(lambda: xc.VM.get_resident_on(vm) == mine[1])
    xc.VM.hard_shutdown(vm)  # C hands it to B
    assert xc.VM.get_power_state(vm) == "Halted" and on_host(pool, 1, xa, vm) is None
    assert until(lambda: xb.VM.get_power_state(vm) == "Halted")
    xa.VM.destroy(vm)


def test_vm_start_on_a_named_host_and_without_affinity_where_memory_is_most_free(pool, xs, mine):
    xa, _, xc = xs
    vm = new_vm(xa, unique("on"))
    task = xa.Async.VM.start_on(vm, mine[2], False, False)
    assert until(lambda: xa.task.get_status(task) != "pending", 20)
    assert xa.task.get_status(task) == "success", xa.task.get_error_info(task)
    assert xa.VM.get_resident_on(vm) == mine[2] and on_host(pool, 2, xa, vm)["state"] == "Running"
    free = {h: int(xa.host.get_memory_free(h)) for h in mine}
    other = new_vm(xa, unique("free"))
    xa.VM.start(other, False, False)
    assert int(free[xa.VM.get_resident_on(other)]) == max(free.values())
    big = new_vm(xa, unique("big"), memory_target=64 << 30, memory_static_max=64 << 30)
    refused = failure(xa.VM.start, big, False, False)
    assert refused[0] == "NO_HOSTS_AVAILABLE" and refused[1].count("bytes free") == 3, refused
    for each in (vm, other):
        xc.VM.hard_shutdown(each)
    for each in (vm, other, big):
        xa.VM.destroy(each)


def test_an_anti_affinity_group_of_three_lands_on_three_hosts(pool, xs, mine):
    xa, _, xc = xs
    vms = [new_vm(xa, unique("spread")) for _ in range(3)]
    group = xa.VM_group.create({"name_label": unique("anti"), "placement": "anti_affinity", "VMs": vms})
    xa.VM_group.start(group, False)
    where = [xa.VM.get_resident_on(vm) for vm in vms]
    assert sorted(where) == sorted(mine)
    for vm, host in zip(vms, where, strict=True):
        i = host_index(mine, host)  # the host's own hypervisor runs it, and the host says so itself
        assert on_host(pool, i, xa, vm)["state"] == "Running"
        assert [on_host(pool, j, xa, vm) for j in range(3) if j != i] == [None, None]
        assert until(lambda vm=vm, i=i, host=host: xs[i].VM.get_resident_on(vm) == host)
        assert xs[i].VM_metrics.get_VCPUs_number(xs[i].VM.get_metrics(vm)) == "1"
    xc.VM_group.hard_shutdown(group)  # each member stopped by its host
    assert [xc.VM.get_power_state(vm) for vm in vms] == ["Halted"] * 3
    assert all(on_host(pool, host_index(mine, h), xa, vm) is None for vm, h in zip(vms, where, strict=True))
    xa.VM_group.destroy(group)
    for vm in vms:
        xa.VM.destroy(vm)


def test_an_anti_affinity_group_of_four_on_three_hosts_is_refused_before_anything_starts(pool, xs, mine):
    xa = xs[0]
    vms = [new_vm(xa, unique("four")) for _ in range(4)]
    group = xa.VM_group.create({"name_label": unique("anti4"), "placement": "anti_affinity", "VMs": vms})
    refused = failure(xa.VM_group.start, group, False)
    assert refused[0] == "NO_HOSTS_AVAILABLE" and "distinct hosts" in refused[1], refused
    assert [xa.VM.get_power_state(vm) for vm in vms] == ["Halted"] * 4
    assert all(on_host(pool, i, xa, vm) is None for vm in vms for i in range(3))
    xa.VM_group.destroy(group)
    for vm in vms:
        xa.VM.destroy(vm)


def test_a_group_migrates_between_hosts_and_stays_the_same_objects(pool, xs, mine):
    xa, xb, xc = xs
    vms = [new_vm(xa, unique("mig")) for _ in range(2)]
    group = xa.VM_group.create({"name_label": unique("moving"), "VMs": vms})
    for vm in vms:
        xa.VM.start_on(vm, mine[1], False, False)
    count = len(xa.VM.get_all())
    xa.VM_group.migrate(group, mine[2], False)  # through A; B sends them to C
    for vm in vms:
        assert until(lambda vm=vm: xa.VM.get_resident_on(vm) == mine[2])
        assert xa.VM.get_power_state(vm) == "Running"
        assert on_host(pool, 2, xa, vm)["state"] == "Running" and on_host(pool, 1, xa, vm) is None
    assert len(xa.VM.get_all()) == count and sorted(xc.VM_group.get_VMs(group)) == sorted(vms)
    xb.VM.migrate(vms[0], mine[0], False)  # one back, through B, to A
    assert until(lambda: xb.VM.get_resident_on(vms[0]) == mine[0])
    assert on_host(pool, 0, xa, vms[0])["state"] == "Running" and on_host(pool, 2, xa, vms[0]) is None
    assert len(xa.VM.get_all()) == count
    for vm in vms:
        xb.VM.hard_shutdown(vm)
        xa.VM.destroy(vm)
    xa.VM_group.destroy(group)


def test_alone_the_one_host_is_this_servers_and_nothing_is_spread(make_server):
    server = make_server(unix=False)
    s = session(server)
    x = s.xenapi
    (host,) = x.host.get_all()
    assert s.xenapi.session.get_this_host(s._session) == host
    assert x.host.get_address(host) == "" and x.host.get_facts(host) == {}
    vms = [new_vm(x, unique("alone")) for _ in range(2)]
    group = x.VM_group.create({"name_label": unique("anti"), "placement": "anti_affinity", "VMs": vms})
    x.VM_group.start(group, False)  # one host: both on it
    assert [x.VM.get_resident_on(vm) for vm in vms] == [host, host]
    x.VM_group.hard_shutdown(group)
    x.VM.start_on(vms[0], host, False, False)
    assert x.VM.get_resident_on(vms[0]) == host
    reply = xmlrpc.client.ServerProxy(server.url).session.pool_login("", "root", "pool-admin", "")
    assert reply == {"Status": "Failure", "ErrorDescription": ["SESSION_AUTHENTICATION_FAILED"]}


def test_two_hosts_starting_one_vm_at_once_run_it_once(pool, xs, mine):
    """Through A onto B and through C onto C, at the same moment: the first host to claim the VM in
    etcd starts it, the other refuses before its hypervisor does anything."""
    xa = xs[0]
    vms = [new_vm(xa, unique("twice")) for _ in range(4)]
    assert until(lambda: all(None not in names_everywhere(xs, vm) for vm in vms))
    for vm in vms:
        outcomes = []
        go = threading.Barrier(2)

        def start(i, host, vm=vm, outcomes=outcomes, go=go):
            x = session(pool.servers[i]).xenapi
            go.wait()
            try:
                x.VM.start_on(vm, host, False, False)
                outcomes.append("started")
            except XenAPI.Failure as exc:
                outcomes.append(exc.details[0])

        threads = [threading.Thread(target=start, args=(0, mine[1])), threading.Thread(target=start, args=(2, mine[2]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert outcomes.count("started") == 1, outcomes
        assert set(outcomes) - {"started"} <= {"STORE_WRITE_FAILED", "OPERATION_NOT_ALLOWED", "VM_BAD_POWER_STATE"}
        running = [i for i in range(3) if on_host(pool, i, xa, vm) is not None]
        assert len(running) == 1 and until(lambda vm=vm, i=running[0]: xa.VM.get_resident_on(vm) == mine[i])
    for vm in vms:
        xa.VM.hard_shutdown(vm)
        xa.VM.destroy(vm)


def test_forwarding_reuses_one_session_and_no_host_writes_its_record_while_idle(pool, xs, mine):
    """Work counted: the calls one host hands another go over one session per caller (not a login
    per call), and a host publishes its facts when they change, never on a poll."""
    xa, xb, _ = xs
    vm = new_vm(xa, unique("count"))
    xa.VM.start_on(vm, mine[1], False, False)
    for _ in range(5):
        xa.VM.pause(vm)
        xa.VM.unpause(vm)
    forwarded = [r for r in xb.session.get_all_records().values() if r["originator"] == "xend-ext forward"
                 and r["this_user"] == "root" and r["role"] == "pool-admin"]
    assert len(forwarded) <= 2  # A's (and C's, from an earlier test): one each
    token = token_now(xa, ["host"])
    time.sleep(1.5)
    assert event_from(xa, ["host"], token, 0.1)["events"] == []
    xa.VM.hard_shutdown(vm)  # memory freed on B: B's record says so, once
    changed = [e for e in event_from(xa, ["host"], token, 2.0)["events"] if e["ref"] == mine[1]]
    assert changed and int(changed[-1]["snapshot"]["facts"]["memory_free"]) == int(xb.host.get_memory_free(mine[1]))
    xa.VM.destroy(vm)
