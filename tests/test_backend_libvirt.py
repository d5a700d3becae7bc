"""The libvirt backend against libvirt's test driver, checked in libvirt's own view of the domains.

Each test gets a private fake host (a node XML under tmp_path). The backend tests call the backend
directly and look at the same host through the backend's libvirt connection (vcpuPinInfo, the live
and inactive domain XML, managed save images). The server tests run the real server in this process
(its listeners on real sockets, the official client on the wire) because the test driver's host
lives inside the process that opened it: that is the only place where "a change made outside
xend-ext" can be made to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import libvirt  # a missing binding fails this module: CI must have it (make test installs it)
import pytest
import XenAPI
from inprocess import InProcessServer
from lxml import etree

from xend_ext.backends.base import POOL0_UUID, BackendError, Capability, DomainConfig, PowerState
from xend_ext.backends.libvirt import NS, LibvirtBackend
from xend_ext.backends.partitions import Partitions
from xend_ext.server import Config

MIB = 1 << 20
UUID_A = "aaaaaaaa-0000-4000-8000-000000000001"
UUID_B = "bbbbbbbb-0000-4000-8000-000000000002"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def node_xml(path: Path, cpus: int = 4, memory_mib: int = 4096, domains: str = "") -> str:
    path.write_text(
        f"<node xmlns:test='{TEST_NS}'>\n"
        f"  <cpu><mhz>2400</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores>"
        f"<threads>1</threads><active>{cpus}</active></cpu>\n"
        f"  <memory>{memory_mib * 1024}</memory>\n{domains}</node>\n", encoding="utf-8")
    return f"test://{path}"


def test_domain(name: str, uuid: str, runstate: int, memory_mib: int = 128) -> str:
    """A domain of the node file, in runstate 1 (running), 3 (paused) or 5 (shut off)."""
    return (f"  <domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
            f"<test:runstate>{runstate}</test:runstate></domain>\n")


test_domain.__test__ = False  # a helper, not a test


@pytest.fixture
def lv(tmp_path):
    b = LibvirtBackend(node_xml(tmp_path / "node.xml"), tmp_path / "state")
    yield b
    b.close()


def config(uuid=UUID_A, name="a", memory=256 * MIB, vcpus=2, pool="", pins=None, **kw) -> DomainConfig:
    return DomainConfig(uuid=uuid, name=name, memory=memory, memory_max=512 * MIB, vcpus=vcpus, vcpus_max=4,
                        pool=pool, pins=pins or {}, metadata={"pool_name": "Pool-0"}, **kw)


def pins_of(b: LibvirtBackend, uuid: str) -> list[set[int]]:
    """Where libvirt lets each vCPU run (its live affinity)."""
    return [{c for c, on in enumerate(cpumap[:b.ncpus]) if on}
            for cpumap in b.conn.lookupByUUIDString(uuid).vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)]


def xml(b: LibvirtBackend, uuid: str, flags: int = 0) -> etree._Element:
    return etree.fromstring(b.conn.lookupByUUIDString(uuid).XMLDesc(flags).encode())


# -- the lv, in libvirt's own view ------------------------------------------------------------

def test_host_facts_come_from_libvirt(lv):
    info = lv.host_info()
    assert len(info.cpus) == 4 and info.memory_total == 4096 * MIB
    assert info.software_version["hypervisor"].startswith("TEST")
    # the test driver's scheduler is a stub, it has no partitions nor CPU time; migration is save-based
    missing = {Capability.SCHED_CREDIT, Capability.SCHED_DOMAIN, Capability.MEMORY_MAX_LIVE, Capability.UTILISATION}
    assert not missing & lv.capabilities
    wanted = {Capability.LIFECYCLE, Capability.POOLS, Capability.PIN, Capability.SAVE, Capability.MIGRATE}
    assert wanted <= lv.capabilities
    assert lv.migration == "save"
    with pytest.raises(BackendError) as err:
        lv.set_sched(UUID_A, 512, 0)
    assert (err.value.code, err.value.params) == ("NOT_IMPLEMENTED", ["sched_credit"])


@pytest.mark.parametrize("flags, says", [
    (["--libvirt-migrate-uri", "qemu+tls://elsewhere/system"], "libvirt's TEST driver is not used for live migration"),
    (["--libvirt-migrate-address", "10.0.0.5"], "--libvirt-migrate-address goes with --libvirt-migrate-uri"),
])
def test_live_migration_flags_refuse_the_start_where_libvirt_cannot_migrate(tmp_path, flags, says):
    """libvirt's test driver has no migration (virDomainMigrate* answer code 3): one line, exit 1."""
    result = subprocess.run([sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(tmp_path / "s"),
                             "--listen", "127.0.0.1:0", "--unix", "none", "--backend", "libvirt",
                             "--libvirt-uri", node_xml(tmp_path / "node.xml"), *flags],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stderr.startswith("xend-ext: cannot start: "), result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def test_partitions_need_cgroup_v1_cpu_and_root(tmp_path):
    """Scheduling domains are declared only where the host's cgroups allow them, with the reason."""
    hybrid = ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
              "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n"
              "cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    found, reason = Partitions.probe(hybrid)
    if os.geteuid() == 0 and os.access("/sys/fs/cgroup/cpu", os.W_OK):
        assert found is not None and reason == ""
        assert found.cpu == Path("/sys/fs/cgroup/cpu")  # the named hierarchy is not one libvirt uses
        assert found.hierarchies == (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpuset"),
                                     Path("/sys/fs/cgroup/unified"))
    else:
        assert found is None and "needs root" in reason
    found, reason = Partitions.probe("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    assert found is None and "cgroup v2" in reason


def test_start_defines_a_persistent_domain_with_our_metadata(lv):
    d = lv.start(config(), paused=False)
    dom = lv.conn.lookupByUUIDString(UUID_A)
    assert dom.isActive() and dom.isPersistent() and d.domid == dom.ID() > 0
    assert (d.power_state, d.memory, d.vcpus, d.vcpus_max) == (PowerState.RUNNING, 256 * MIB, 2, 4)
    inactive = xml(lv, UUID_A, libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert inactive.findtext("currentMemory") == str(256 * 1024) and inactive.find("vcpu").get("current") == "2"
    ours = inactive.find(f"metadata/{{{NS}}}xend")
    assert ours.get("pool") == POOL0_UUID
    assert [k.text for k in ours.iterfind("{*}keep")] == ["Pool-0"]
    assert lv.start(config(name="b", uuid=UUID_B), paused=True).power_state == PowerState.PAUSED
    assert lv.conn.lookupByUUIDString(UUID_B).state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_definition_edits_keep_what_libvirt_had(lv):
    """A domain libvirt already knew keeps its devices: only our parts of the XML are rewritten."""
    lv.conn.defineXML(f"<domain type='test'><name>a</name><uuid>{UUID_A}</uuid><memory>131072</memory>"
                           "<vcpu>1</vcpu><os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                           "<source file='/var/lib/a.img'/><target dev='vda'/></disk></devices></domain>")
    lv.start(config(), paused=False)
    lv.shutdown(UUID_A, clean=True)
    inactive = xml(lv, UUID_A, libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert inactive.find("devices/disk/source").get("file") == "/var/lib/a.img"
    assert inactive.findtext("memory") == str(512 * 1024)
    assert lv.domain(UUID_A) is None  # halted, still defined
    assert [c.uuid for c in lv.definitions()] == [UUID_A]
    lv.undefine(UUID_A)
    assert lv.definitions() == []


def test_memory_and_vcpus_live_and_config(lv):
    lv.start(config(), paused=False)
    d = lv.set_memory(UUID_A, 300 * MIB)
    assert d.memory == 300 * MIB
    assert xml(lv, UUID_A).findtext("currentMemory") == str(300 * 1024)  # live
    assert xml(lv, UUID_A, libvirt.VIR_DOMAIN_XML_INACTIVE).findtext("currentMemory") == str(256 * 1024)
    lv.define(config(memory=400 * MIB, vcpus=3))  # static: the definition only
    assert xml(lv, UUID_A, libvirt.VIR_DOMAIN_XML_INACTIVE).findtext("currentMemory") == str(400 * 1024)
    assert lv.domain(UUID_A).memory == 300 * MIB
    assert lv.set_vcpus(UUID_A, 3).vcpus == 3
    assert len(pins_of(lv, UUID_A)) == 3
    with pytest.raises(BackendError) as err:
        lv.set_memory(UUID_A, 600 * MIB)
    assert err.value.code == "VALUE_NOT_SUPPORTED"
    with pytest.raises(BackendError) as err:
        lv.set_vcpus(UUID_A, 5)
    assert err.value.code == "VALUE_NOT_SUPPORTED"
    with pytest.raises(BackendError) as err:
        lv.start(config(uuid=UUID_B, name="big", memory=8192 * MIB), paused=False)
    assert err.value.code == "HOST_NOT_ENOUGH_FREE_MEMORY"


def test_pools_and_pins_are_enforced_by_libvirt_pinning(lv):
    pool = lv.pool_remove_cpu(POOL0_UUID, 3)
    lv.pool_remove_cpu(POOL0_UUID, 2)
    assert pool.cpus == {0, 1, 2}
    lv.pool_activate("p1-uuid", "p1", "credit", frozenset({2, 3}))
    lv.start(config(pool="p1-uuid"), paused=False)
    lv.start(config(uuid=UUID_B, name="b", vcpus=1), paused=False)
    assert pins_of(lv, UUID_A) == [{2, 3}, {2, 3}]
    assert pins_of(lv, UUID_B) == [{0, 1}]
    lv.pin(UUID_A, 1, frozenset({3}))
    assert pins_of(lv, UUID_A) == [{2, 3}, {3}]
    assert lv.domain(UUID_A).pins == {1: frozenset({3})}  # the pins as asked, not the pool
    moved = lv.pool_move_domain(UUID_A, POOL0_UUID)
    assert moved.pool == POOL0_UUID
    assert pins_of(lv, UUID_A) == [{0, 1}, {0, 1}]  # the pin to 3 lies outside Pool-0 now
    with pytest.raises(BackendError) as err:
        lv.pool_add_cpu(POOL0_UUID, 3)
    assert err.value.code == "INVALID_CPU"  # still p1's
    lv.pool_deactivate("p1-uuid")
    lv.pool_add_cpu(POOL0_UUID, 3)
    assert pins_of(lv, UUID_A) == [{0, 1, 3}, {3}]
    assert [p.name for p in lv.pools()] == ["Pool-0"]


def test_pools_survive_a_new_connection(tmp_path):
    uri = node_xml(tmp_path / "node.xml")
    b = LibvirtBackend(uri, tmp_path / "state")
    b.pool_remove_cpu(POOL0_UUID, 3)
    b.pool_activate("p1-uuid", "p1", "credit2", frozenset({3}))
    b.close()
    again = LibvirtBackend(uri, tmp_path / "state")
    assert {(p.name, p.sched, p.cpus) for p in again.pools()} == {
        ("Pool-0", "credit", frozenset({0, 1, 2})), ("p1", "credit2", frozenset({3}))}
    again.close()


def test_reserved_cpus_keep_other_domains_off(lv):
    lv.start(config(), paused=False)
    lv.start(config(uuid=UUID_B, name="b", vcpus=1), paused=False)
    lv.set_occupancy({0: frozenset({UUID_A}), 1: frozenset({UUID_A})})
    assert pins_of(lv, UUID_B) == [{2, 3}]
    assert pins_of(lv, UUID_A) == [{0, 1, 2, 3}] * 2
    lv.set_occupancy({})
    assert pins_of(lv, UUID_B) == [{0, 1, 2, 3}]


def test_suspend_is_a_managed_save_and_resume_boots_from_it(lv):
    lv.start(config(), paused=False)
    d = lv.suspend(UUID_A)
    dom = lv.conn.lookupByUUIDString(UUID_A)
    assert d.power_state == PowerState.SUSPENDED and d.domid == -1
    assert not dom.isActive() and dom.hasManagedSaveImage(0)
    assert lv.resume(UUID_A, paused=True).power_state == PowerState.PAUSED
    assert not dom.hasManagedSaveImage(0)
    lv.suspend(UUID_A)
    lv.shutdown(UUID_A, clean=False)  # a hard shutdown of a suspended domain drops its image
    assert not dom.hasManagedSaveImage(0) and lv.domain(UUID_A) is None


def test_save_keeps_the_vm_record_in_the_image(lv, tmp_path):
    lv.start(config(), paused=False)
    image = tmp_path / "a.save"
    lv.save(UUID_A, image, {"name_label": "a", "note": "<&>"})
    assert lv.domain(UUID_A) is None and image.stat().st_size > 0
    assert lv.read_image(image) == {"name_label": "a", "note": "<&>"}
    d, meta = lv.restore(image, paused=True, config=config())
    assert d.power_state == PowerState.PAUSED and meta["note"] == "<&>"
    assert lv.read_image(image)["name_label"] == "a"  # the file is unchanged
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"not an image")
    with pytest.raises(BackendError) as err:
        lv.read_image(bogus)
    assert err.value.code == "INVALID_VALUE"


def test_state_checks_use_what_libvirt_says_now(lv):
    lv.start(config(), paused=False)
    lv.conn.lookupByUUIDString(UUID_A).suspend()  # behind the lv's back
    with pytest.raises(BackendError) as err:
        lv.pause(UUID_A)
    assert err.value.params[-1] == "paused"
    assert lv.unpause(UUID_A).power_state == PowerState.RUNNING


def test_events_report_only_outside_changes(lv):
    seen: list[str] = []
    lv.watch(lambda kind, ident: seen.append(ident))
    lv.start(config(), paused=False)
    lv.pause(UUID_A)
    time.sleep(0.5)  # our own changes: their events arrive, but nothing differs from what we know
    assert seen == []
    lv.conn.lookupByUUIDString(UUID_A).resume()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [UUID_A]


# -- the server on the libvirt lv, in this process ------------------------------------------------

@pytest.fixture
def live(tmp_path):
    domains = (test_domain("found-running", UUID_A, 1) + test_domain("found-paused", UUID_B, 3)
               + test_domain("found-off", "cccccccc-0000-4000-8000-000000000003", 5))
    config = Config(state_dir=tmp_path / "state", listen=[("127.0.0.1", 0)], backend="libvirt",
                    libvirt_uri=node_xml(tmp_path / "node.xml", domains=domains))
    config.state_dir.mkdir()
    server = InProcessServer(config)
    session = XenAPI.Session(server.url)
    session.login_with_password("root", "")
    yield server, session.xenapi
    session.xenapi.session.logout()
    server.stop()


def test_domains_in_libvirt_are_discovered_at_start(live):
    _server, api = live
    states = {r["name_label"]: r["power_state"] for r in api.VM.get_all_records().values()}
    assert states == {"Domain-0": "Running", "found-running": "Running", "found-paused": "Paused",
                      "found-off": "Halted"}


def event_from(api, classes, token, timeout):
    return getattr(api.event, "from")(classes, token, timeout)  # "from" is a Python keyword


def test_a_change_made_outside_is_a_mod_event(live):
    server, api = live
    vm = api.VM.get_by_uuid(UUID_A)
    token = event_from(api, ["VM"], "", 0.0)["token"]
    server.conn.lookupByUUIDString(UUID_A).suspend()  # virsh suspend, as an operator would
    deadline = time.monotonic() + 10
    changed = []
    while not changed and time.monotonic() < deadline:
        batch = event_from(api, ["VM"], token, 2.0)
        token = batch["token"]
        changed = [e for e in batch["events"] if e["ref"] == vm and e["operation"] == "mod"
                   and e["snapshot"]["power_state"] == "Paused"]
    assert changed
    assert api.VM.get_power_state(vm) == "Paused"
    server.conn.lookupByUUIDString(UUID_A).destroy()
    deadline = time.monotonic() + 10
    while api.VM.get_power_state(vm) != "Halted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.VM.get_power_state(vm) == "Halted"


def test_a_domain_started_outside_becomes_a_vm(live):
    server, api = live
    server.conn.createXML("<domain type='test'><name>outsider</name><memory>65536</memory><vcpu>1</vcpu>"
                          "<os><type>hvm</type></os></domain>", 0)
    deadline = time.monotonic() + 10
    while not api.VM.get_by_name_label("outsider") and time.monotonic() < deadline:
        time.sleep(0.05)
    [vm] = api.VM.get_by_name_label("outsider")
    assert api.VM.get_power_state(vm) == "Running"


def test_allocation_modes_map_to_live_and_config(live):
    """dynamic → AFFECT_LIVE, static → the persistent definition, perm → both."""
    server, api = live
    vm = api.VM.create({"name_label": "modes", "memory_target": str(128 * MIB), "memory_static_max": str(512 * MIB),
                        "VCPUs_at_startup": "1", "VCPUs_max": "4"})
    api.VM.start(vm, False, False)
    uuid = api.VM.get_uuid(vm)
    dom = server.conn.lookupByUUIDString(uuid)
    kept = {k.get("key"): k.text for k in etree.fromstring(dom.XMLDesc(0).encode()).iterfind(
        f"metadata/{{{NS}}}xend/{{*}}keep")}
    assert kept == {"pool_name": "Pool-0", "group": "Null-Group"}  # membership, readable with virsh

    def kib(flags):
        return int(etree.fromstring(dom.XMLDesc(flags).encode()).findtext("currentMemory"))

    api.VM.set_memory(vm, str(200 * MIB), "dynamic")
    assert (kib(0), kib(libvirt.VIR_DOMAIN_XML_INACTIVE)) == (200 * 1024, 128 * 1024)
    api.VM.set_memory(vm, str(300 * MIB), "static")
    assert (kib(0), kib(libvirt.VIR_DOMAIN_XML_INACTIVE)) == (200 * 1024, 300 * 1024)
    api.VM.set_memory(vm, str(256 * MIB), "perm")
    assert (kib(0), kib(libvirt.VIR_DOMAIN_XML_INACTIVE)) == (256 * 1024, 256 * 1024)
    api.VM.set_VCPUs(vm, "3", "perm")
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 3
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 3
    with pytest.raises(XenAPI.Failure) as err:
        api.VM.set_sched_weight(vm, "512", "dynamic")
    assert err.value.details == ["NOT_IMPLEMENTED", "sched_credit"]
    api.VM.hard_shutdown(vm)
    api.VM.destroy(vm)
    with pytest.raises(libvirt.libvirtError):
        server.conn.lookupByUUIDString(uuid)  # destroying the VM undefines its libvirt domain
