"""Hosts of a pool (issue 20): each server its own host, forwarding to the host an object is on,
placement across hosts. Three real etcd members and three real servers (simulated hosts of 4
pCPUs) on loopback, driven by the official client through each host."""

from __future__ import annotations

import xmlrpc.client

import pytest
from etcdkit import Pool, until
from test_cluster import names_everywhere
from vmkit import backend_domain, failure, new_vm, session, unique


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
    xc.VM.hard_shutdown(vm)
    assert xc.VM.get_power_state(vm) == "Halted" and on_host(pool, 1, xa, vm) is None
    xa.VM.destroy(vm)


def test_a_call_on_another_hosts_cpu_pool_is_made_by_that_host(pool, xs, mine):
    xa, xb, _ = xs
    pool0 = next(p for p in xa.host.get_resident_cpu_pools(mine[1]) if xa.cpu_pool.get_name_label(p) == "Pool-0")
    cpu3 = next(c for c in xa.host.get_host_CPUs(mine[1]) if xa.host_cpu.get_number(c) == "3")
    spare = xb.cpu_pool.create({"name_label": unique("spare"), "ncpu": "1"})  # defined on B
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
