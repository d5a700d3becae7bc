"""Hosts of a pool (issue 20): each server its own host, forwarding to the host an object is on,
placement across hosts. Three real etcd members and three real servers (simulated hosts of 4
pCPUs) on loopback, driven by the official client through each host."""

from __future__ import annotations

import pytest
from etcdkit import Pool, until
from vmkit import session


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
