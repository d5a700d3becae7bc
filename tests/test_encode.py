"""Records encoded once per version, and event.from replies shared by the watchers that asked the same.

The servers of the suite run with XEND_EXT_CHECK_ENCODING=1 (conftest), so every cached record the
other tests read is also compared with a fresh encoding. Here: that what a client reads follows
every kind of change, that watchers get the same bytes, and (in-process, counting the encoder's
work, never timing it) that unchanged records and shared replies are not encoded again.
"""

from __future__ import annotations

import http.client
import threading
import time
import xmlrpc.client
from urllib.parse import urlsplit

import pytest
import XenAPI
from conftest import ok
from inprocess import InProcessServer
from vmkit import new_vm

from xend_ext.server import Config


@pytest.fixture
def api(server):
    session = XenAPI.Session(server.url)
    session.login_with_password("root", "")
    yield session.xenapi
    session.xenapi.session.logout()


def test_a_read_record_follows_changes_of_the_object(api):
    vm = new_vm(api, "before")
    assert api.VM.get_record(vm)["name_label"] == "before"
    assert api.VM.get_all_records()[vm]["name_label"] == "before"
    api.VM.set_name_label(vm, "after")
    api.VM.add_to_other_config(vm, "k", "v<&>")
    record = api.VM.get_record(vm)
    assert record["name_label"] == "after" and record["other_config"] == {"k": "v<&>"}
    assert api.VM.get_all_records()[vm]["name_label"] == "after"
    assert list(api.VM.get_all_records_where('field "name_label"="after"')) == [vm]


def test_a_read_record_follows_back_references_and_computed_fields(api):
    host = api.host.get_all()[0]
    vm = new_vm(api)
    metrics = api.VM.get_metrics(vm)
    assert vm not in api.host.get_record(host)["resident_VMs"]  # read, so cached
    halted = api.VM_metrics.get_record(metrics)
    assert halted["VCPUs_number"] == "0" and halted["memory_actual"] == "0"
    time.sleep(1.1)  # last_updated is the time of the change, to the second on the wire
    api.VM.start(vm, False, False)
    assert vm in api.host.get_record(host)["resident_VMs"]  # a back-reference: the host was touched
    running = api.VM_metrics.get_record(metrics)  # computed from the backend: the metrics were touched
    assert running["VCPUs_number"] == "1" and running["memory_actual"] == str(128 << 20)
    assert running["last_updated"] > halted["last_updated"]
    assert api.VM_metrics.get_record(metrics)["last_updated"] == running["last_updated"]  # cacheable
    api.VM.hard_shutdown(vm)
    assert vm not in api.host.get_record(host)["resident_VMs"]
    assert api.VM_metrics.get_record(metrics)["VCPUs_number"] == "0"


def test_volatile_fields_are_read_at_every_call(api):
    """The host's free memory changes when a running VM's memory does, and the host is not touched."""
    host = api.host.get_all()[0]
    vm = new_vm(api)
    api.VM.start(vm, False, False)
    free = int(api.host.get_record(host)["memory_free"])
    api.VM.set_memory(vm, str(64 << 20), "dynamic")
    assert int(api.host.get_record(host)["memory_free"]) == free + (64 << 20)


def _post(url: str, method: str, *params) -> bytes:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", "/", xmlrpc.client.dumps(params, method).encode(), {"Content-Type": "text/xml"})
    body = conn.getresponse().read()
    conn.close()
    return body


def _watch(url: str, session: str, token: str, count: int) -> tuple[list[bytes], list[threading.Thread]]:
    """``count`` event.from calls on the host with this token, waiting together; their reply bodies."""
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(_post(url, "event.from", session, ["host"], token, 30.0)))
               for _ in range(count)]
    for t in threads:
        t.start()
    return bodies, threads


def _token(url: str, session: str) -> str:
    return xmlrpc.client.loads(_post(url, "event.from", session, ["host"], "", 0.0))[0][0]["Value"]["token"]


def test_watchers_with_the_same_token_get_the_same_bytes(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    token = _token(server.url, s)
    bodies, threads = _watch(server.url, s, token, 2)
    time.sleep(0.5)  # both are waiting
    ok(proxy.host.set_name_label(s, host, "watched"))
    for t in threads:
        t.join(30)
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    events = xmlrpc.client.loads(bodies[0])[0][0]["Value"]["events"]
    assert [(e["operation"], e["snapshot"]["name_label"]) for e in events] == [("mod", "watched")]


# -- counting the encoder's work, in-process ----------------------------------------------------

@pytest.fixture
def inproc(tmp_path):
    config = Config(state_dir=tmp_path / "state", listen=[("127.0.0.1", 0)])
    config.state_dir.mkdir()
    server = InProcessServer(config)
    proxy = xmlrpc.client.ServerProxy(server.url)
    session = ok(proxy.session.login_with_password("root", ""))
    yield server, proxy, session
    server.stop()


def test_unchanged_records_are_not_encoded_again(inproc):
    server, proxy, s = inproc
    records = server.server.hub.records
    vms = [ok(proxy.VM.create(s, {"name_label": f"vm-{i}", "memory_target": str(128 << 20),
                                  "memory_static_max": str(256 << 20), "VCPUs_at_startup": "1", "VCPUs_max": "1",
                                  "VCPUs_params": {}})) for i in range(20)]
    first = ok(proxy.VM.get_all_records(s))
    before = records.encodings
    assert ok(proxy.VM.get_all_records(s)) == first
    for vm in vms:
        ok(proxy.VM.get_record(s, vm))
    assert records.encodings == before  # every record came from the cache
    ok(proxy.VM.set_name_label(s, vms[3], "renamed"))
    assert ok(proxy.VM.get_all_records(s))[vms[3]]["name_label"] == "renamed"
    assert records.encodings == before + 1  # only the changed one


@pytest.mark.parametrize("watchers", [1, 20])
def test_identical_watchers_share_one_reply_per_generation(inproc, watchers):
    server, proxy, s = inproc
    hub = server.server.hub
    host = ok(proxy.host.get_all(s))[0]
    for generation in range(2):
        token = _token(server.url, s)
        bodies, threads = _watch(server.url, s, token, watchers)
        deadline = time.monotonic() + 10
        while hub.waiting < watchers and time.monotonic() < deadline:  # every one waits
            time.sleep(0.01)
        built = hub.replies_built
        ok(proxy.host.set_name_label(s, host, f"gen-{generation}"))
        for t in threads:
            t.join(30)
        assert len(bodies) == watchers and len(set(bodies)) == 1
        assert hub.replies_built == built + 1
