"""XAPI's JSON-RPC on POST /jsonrpc (docs/api/jsonrpc.md): both versions, over the dispatcher,
the sessions and the roles the XML-RPC clients use."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
import XenAPI


def _post(server, body, path: str = "/jsonrpc") -> tuple[int, str, object]:
    url = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    ctype = resp.getheader("Content-Type")
    return resp.status, ctype, (json.loads(text) if ctype == "application/json" else text)


def _v2(server, method, *params, ident=1):
    status, ctype, reply = _post(server, {"jsonrpc": "2.0", "method": method, "params": list(params), "id": ident})
    assert status == 200 and ctype == "application/json", reply
    assert reply["jsonrpc"] == "2.0" and reply["id"] == ident
    return reply


def _login(server) -> str:
    return _v2(server, "session.login_with_password", "root", "", "1.0", "tests")["result"]


def test_version_1_and_2_replies(server):
    status, _, v1 = _post(server, {"method": "session.login_with_password", "params": ["root", "", "1.0", "t"],
                                   "id": "a"})
    assert status == 200 and set(v1) == {"result", "error", "id"}
    assert v1["error"] is None and v1["id"] == "a" and v1["result"].startswith("OpaqueRef:")
    _, _, bad = _post(server, {"method": "host.get_all", "params": ["OpaqueRef:nope"], "id": 7})
    assert bad == {"result": None, "error": ["SESSION_INVALID", "OpaqueRef:nope"], "id": 7}
    bad2 = _v2(server, "host.get_all", "OpaqueRef:nope", ident=8)
    assert bad2 == {"jsonrpc": "2.0", "id": 8,
                    "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:nope"]}}


def test_sessions_are_shared_with_xml_rpc_and_values_are_typed(server):
    s = _login(server)
    xml = XenAPI.Session(server.url)
    xml._session = s  # a session made over JSON-RPC is valid over XML-RPC
    host = xml.xenapi.host.get_all()[0]
    rec = _v2(server, "host.get_record", s, host)["result"]
    assert rec["API_version_major"] == 2 and isinstance(rec["host_CPUs"], list)  # an int is a number
    assert rec["uuid"] == xml.xenapi.host.get_uuid(host)
    cpus = _v2(server, "host_cpu.get_all_records_where", s, 'field "number"="3"')["result"]
    assert [c["number"] for c in cpus.values()] == [3]
    assert _v2(server, "host.set_name_label", s, host, "json")["result"] == ""  # void
    assert xml.xenapi.host.get_name_label(host) == "json"
    assert isinstance(_v2(server, "system.listMethods")["result"], list)


def test_roles_are_checked(make_server, tmp_path):
    from test_auth import add_user

    state = tmp_path / "state"
    state.mkdir()
    add_user(state, "viewer", "view", "read-only")
    server = make_server("--auth", "file", state_dir=state)
    s = _v2(server, "session.login_with_password", "viewer", "view")["result"]
    refused = _v2(server, "cpu_pool.create", s, {"name_label": "p"})["error"]
    assert refused["message"] == "RBAC_PERMISSION_DENIED" and refused["data"][0] == "cpu_pool.create"
    assert _v2(server, "session.login_with_password", "viewer", "wrong")["error"]["message"] == \
        "SESSION_AUTHENTICATION_FAILED"


def test_events_and_tasks(server):
    s = _login(server)
    task = _v2(server, "Async.cpu_pool.create", s, {"name_label": "jp"})["result"]
    assert task.startswith("OpaqueRef:")
    token, seen = "", []
    for _ in range(20):  # until the task has made the pool (each call waits up to 5 s for news)
        got = _v2(server, "event.from", s, ["cpu_pool", "task"], token, 5.0)["result"]
        token, seen = got["token"], seen + got["events"]
        if any(e["class"] == "cpu_pool" and e["snapshot"]["name_label"] == "jp" for e in seen):
            break
    assert any(e["class"] == "cpu_pool" and e["snapshot"]["name_label"] == "jp" for e in seen)
    done = [e["snapshot"] for e in seen if e["class"] == "task" and e["ref"] == task][-1]
    assert done["status"] == "success" and done["progress"] == 1.0  # a float is a number


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", {"method": "host.get_all", "params": []},  # no id: a notification
    {"jsonrpc": "1.5", "method": "x", "params": [], "id": 1}, {"method": 5, "params": [], "id": 1},
    {"method": "host.get_all", "params": {"a": 1}, "id": 1},  # an object is a list only in 2.0
])
def test_malformed_requests_are_http_400(server, body):
    status, _, text = _post(server, body)
    assert status == 400 and "not a JSON-RPC request" in text
    assert _login(server).startswith("OpaqueRef:")  # and the server goes on serving


def test_a_large_body_is_answered_too(server):
    """Bodies over 256 KiB are parsed off the event loop; the answer is the same."""
    s = _login(server)
    host = _v2(server, "host.get_all", s)["result"][0]
    big = "x" * (300 << 10)
    assert _v2(server, "host.add_to_other_config", s, host, "big", big)["result"] == ""
    assert len(_v2(server, "host.get_other_config", s, host)["result"]["big"]) == 300 << 10
    status, _, text = _post(server, b"[" * 10 + b" " * (300 << 10))
    assert status == 400 and "not a JSON-RPC request" in text
