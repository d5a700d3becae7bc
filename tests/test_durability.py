"""Durable before the reply: every acknowledged write survives kill -9 of the server."""

from __future__ import annotations

import threading
import time
import xmlrpc.client

from conftest import ok

WRITERS = 6


def writer(url: str, name: str, acked: list[str], stop: threading.Event) -> None:
    """Writes fresh keys until the server dies; remembers only those it got a Success for."""
    proxy = xmlrpc.client.ServerProxy(url)
    try:
        s = ok(proxy.session.login_with_password("root", ""))
        host = ok(proxy.host.get_all(s))[0]
        i = 0
        while not stop.is_set():
            key = f"{name}-{i}"
            reply = proxy.host.add_to_other_config(s, host, key, str(i))
            if reply["Status"] == "Success":
                acked.append(key)
            i += 1
    except (OSError, xmlrpc.client.ProtocolError):
        return  # the server was killed mid-call: that write was never acknowledged


def test_kill9_loses_no_acknowledged_write(make_server):
    server = make_server("--unix", "none", unix=False)
    stop = threading.Event()
    acked: list[list[str]] = [[] for _ in range(WRITERS)]
    threads = [threading.Thread(target=writer, args=(server.url, f"w{n}", acked[n], stop)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    written = [key for keys in acked for key in keys]
    assert len(written) > 100, "the writers should have been acknowledged many times before the kill"

    server = make_server("--unix", "none", state_dir=server.state_dir, unix=False)
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    stored = ok(proxy.host.get_other_config(s, host))
    missing = [key for key in written if key not in stored]
    assert missing == []


def test_compaction_and_restart_keep_everything(make_server):
    """Enough writes to compact the journal several times, then a kill -9 and a clean restart."""
    server = make_server()
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    big = "x" * 2000
    for i in range(3000):  # ~6 MB of journal: more than the 4 MiB compaction threshold
        ok(proxy.host.add_to_other_config(s, host, f"k{i}", big + str(i)))
    ok(proxy.host.set_name_label(s, host, "compacted"))
    server.kill9()
    assert (server.state_dir / "state.xml").exists()
    server = make_server(state_dir=server.state_dir)
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    config = ok(proxy.host.get_other_config(s, host))
    assert len(config) == 3000 and config["k2999"] == big + "2999" and config["k10"] == big + "10"
    assert ok(proxy.host.get_name_label(s, host)) == "compacted"
    assert server.stop() == 0
    server = make_server(state_dir=server.state_dir)
    proxy, s = server.login()
    assert len(ok(proxy.host.get_other_config(s, ok(proxy.host.get_all(s))[0]))) == 3000


def test_uuids_stable_across_restart(make_server):
    server = make_server()
    proxy, s = server.login()
    before = ok(proxy.host_cpu.get_all_records(s))
    server.stop()
    server = make_server(state_dir=server.state_dir)
    proxy, s = server.login()
    assert ok(proxy.host_cpu.get_all_records(s)) == before


def test_new_cpus_reconciled_at_start(make_server):
    server = make_server("--cpus", "4")
    proxy, s = server.login()
    assert len(ok(proxy.host_cpu.get_all(s))) == 4
    server.stop()
    server = make_server("--cpus", "6", state_dir=server.state_dir)
    proxy, s = server.login()
    numbers = sorted(int(c["number"]) for c in ok(proxy.host_cpu.get_all_records(s)).values())
    assert numbers == list(range(6))
    assert ok(proxy.host.get_record(s, ok(proxy.host.get_all(s))[0]))["cpu_configuration"]["nr_cpus"] == "6"
