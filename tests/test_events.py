"""Events per API.md §3: event.from with XAPI's tokens, and xend's register/next."""

from __future__ import annotations

import threading
import time

from conftest import fails, ok


def event_from(proxy, s, classes, token, timeout=5.0):
    return ok(getattr(proxy.event, "from")(s, classes, token, timeout))


def test_empty_token_returns_everything_as_add(server):
    proxy, s = server.login()
    result = event_from(proxy, s, ["*"], "")
    ops = {(e["class"], e["operation"]) for e in result["events"]}
    assert ops == {("host", "add"), ("host_cpu", "add"), ("pool", "add"), ("vm", "add"), ("vm_metrics", "add"),
                   ("cpu_pool", "add"), ("vm_group", "add")}
    assert len([e for e in result["events"] if e["class"] == "host_cpu"]) == 8
    assert result["valid_ref_counts"]["host_cpu"] == "8"  # ints travel as strings
    assert all("snapshot" in e and e["snapshot"]["uuid"] for e in result["events"])
    assert len(result["token"]) == 41 and result["token"][20] == ","


def test_changes_after_token_are_mod_and_coalesced(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    token = event_from(proxy, s, ["host"], "")["token"]
    ok(proxy.host.set_name_label(s, host, "a"))
    ok(proxy.host.set_name_label(s, host, "b"))
    result = event_from(proxy, s, ["host"], token)
    assert len(result["events"]) == 1  # two changes of one object, one event
    event = result["events"][0]
    assert (event["class"], event["operation"], event["ref"]) == ("host", "mod", host)
    assert event["snapshot"]["name_label"] == "b"
    assert set(event) >= {"id", "timestamp", "class", "operation", "ref", "snapshot"}
    assert result["token"] > token


def test_timeout_returns_empty_and_wait_wakes_on_change(server):
    proxy, s = server.login()
    token = event_from(proxy, s, ["host"], "")["token"]
    started = time.monotonic()
    result = event_from(proxy, s, ["host"], token, 0.3)
    assert result["events"] == [] and time.monotonic() - started >= 0.25
    host = ok(proxy.host.get_all(s))[0]

    def later():
        time.sleep(0.3)
        p2, s2 = server.login()
        ok(p2.host.add_to_other_config(s2, host, "k", "v"))

    threading.Thread(target=later).start()
    started = time.monotonic()
    result = event_from(proxy, s, ["host"], token, 30.0)
    assert len(result["events"]) == 1 and time.monotonic() - started < 10


def test_object_subscription_and_class_filter(server):
    proxy, s = server.login()
    cpus = ok(proxy.host_cpu.get_all(s))
    token = event_from(proxy, s, ["*"], "")["token"]
    ok(proxy.host_cpu.add_to_other_config(s, cpus[0], "a", "1"))
    ok(proxy.host_cpu.add_to_other_config(s, cpus[1], "a", "1"))
    result = event_from(proxy, s, ["host_cpu/" + cpus[1]], token)
    assert [e["ref"] for e in result["events"]] == [cpus[1]]
    assert event_from(proxy, s, ["host"], token, 0.1)["events"] == []
    assert len(event_from(proxy, s, ["HOST_CPU"], token)["events"]) == 2  # class names are case-blind


def test_bad_token_and_subscription(server):
    proxy, s = server.login()
    assert fails(getattr(proxy.event, "from")(s, ["*"], "garbage", 1.0)) == [
        "EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]
    assert fails(getattr(proxy.event, "from")(s, ["nosuchclass"], "", 1.0)) == [
        "EVENT_SUBSCRIPTION_PARSE_FAILURE", "nosuchclass"]


def test_task_events_include_add(server):
    proxy, s = server.login()
    token = event_from(proxy, s, ["task"], "", 0.1)["token"]
    task = ok(getattr(proxy, "Async.host_cpu.get_unassigned_cpus")(s))
    seen = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and seen.get("status") != "success":
        result = event_from(proxy, s, ["task"], token)
        token = result["token"]
        for e in result["events"]:
            assert e["ref"] == task
            seen = e["snapshot"]
    assert seen["status"] == "success"


def test_register_next_unregister(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    assert fails(proxy.event.next(s)) == ["SESSION_NOT_REGISTERED", s]
    ok(proxy.event.register(s, ["host"]))
    ok(proxy.host.set_name_label(s, host, "one"))
    ok(proxy.host_cpu.add_to_other_config(s, ok(proxy.host_cpu.get_all(s))[0], "x", "y"))  # not registered
    events = ok(proxy.event.next(s))
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [("host", "mod", host)]
    assert events[0]["snapshot"]["name_label"] == "one"
    ok(proxy.event.unregister(s, ["host"]))
    assert fails(proxy.event.next(s)) == ["SESSION_NOT_REGISTERED", s]


def test_events_lost_on_overflow(make_server):
    server = make_server("--event-queue", "5")
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    ok(proxy.event.register(s, []))
    for i in range(7):
        ok(proxy.host.add_to_other_config(s, host, f"k{i}", "v"))
    assert fails(proxy.event.next(s)) == ["EVENTS_LOST"]
    ok(proxy.host.add_to_other_config(s, host, "after", "v"))
    assert len(ok(proxy.event.next(s))) == 1  # the queue works again


def test_event_token_survives_restart(make_server, tmp_path):
    server = make_server()
    proxy, s = server.login()
    token = event_from(proxy, s, ["host"], "")["token"]
    server.stop()
    server = make_server(state_dir=server.state_dir)
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    ok(proxy.host.set_name_label(s, host, "after-restart"))
    result = event_from(proxy, s, ["host"], token)
    assert any(e["snapshot"]["name_label"] == "after-restart" for e in result["events"])


def test_after_restart_empty_token_still_returns_every_object(make_server):
    server = make_server()
    server.stop()
    server = make_server(state_dir=server.state_dir)
    proxy, s = server.login()
    result = event_from(proxy, s, ["host", "host_cpu"], "")
    assert sorted(e["class"] for e in result["events"]) == ["host"] + ["host_cpu"] * 8
    assert {e["operation"] for e in result["events"]} == {"add"}
