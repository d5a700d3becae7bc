"""Hostile input: every bad request gets an HTTP 4xx or a Xen-API failure, and the server goes on."""

from __future__ import annotations

import socket
import time
import urllib.parse
import xmlrpc.client

import pytest
from conftest import fails, ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def raw_request(url: str, data: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are and read the whole answer: the status code and the body."""
    parts = urllib.parse.urlparse(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
            if sep and b"content-length" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer.partition(b"\r\n\r\n")[2]


def post(url: str, body: bytes, path: str = "/RPC2") -> tuple[int, bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return raw_request(url, head.encode() + body)


def still_serving(server) -> None:
    proxy, s = server.login()
    assert len(ok(proxy.host.get_all(s))) == 1


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<methodCall><methodName>session.login_with_password</methodName>
<params><param><value>&lol4;</value></param><param><value></value></param></params></methodCall>"""

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>session.login_with_password</methodName>
<params><param><value>&ext;</value></param><param><value></value></param></params></methodCall>"""


def test_xml_bomb_refused(server):
    status, body = post(server.url, BOMB)
    assert status == 400 and b"forbidden" in body
    still_serving(server)


def test_external_entity_refused(server):
    status, body = post(server.url, EXTERNAL)
    assert status == 400 and b"root:" not in body
    still_serving(server)


def test_oversized_body_refused_before_reading_it(make_server):
    server = make_server("--max-body", "65536")
    head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    status, _ = raw_request(server.url, head)
    assert status == 413
    # and a chunked body that grows past the limit is cut off as it arrives
    chunk = b"x" * 40000
    chunked = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n"
    status, _ = raw_request(server.url, chunked)
    assert status == 413
    still_serving(server)


def test_deep_nesting_refused(server):
    depth = 5000
    value = "<value><array><data>" * depth + "</data></array></value>" * depth
    body = f"<methodCall><methodName>host.get_all</methodName><params><param>{value}</param></params></methodCall>"
    status, text = post(server.url, body.encode())
    assert status == 400 and b"nesting" in text
    still_serving(server)


@pytest.mark.parametrize("body", [
    b"",
    b"not xml at all",
    b"<methodCall><methodName>host.get_all</methodName><params>",
    b"<methodCall><params></params></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><int>abc</int></value></param></params>"
    b"</methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><nosuchtype>1</nosuchtype></value>"
    b"</param></params></methodCall>",
    b"\xff\xfe\x00<\x00m\x00",
])
def test_malformed_xml_is_400(server, body):
    status, _ = post(server.url, body)
    assert status == 400
    still_serving(server)


def test_http_level_errors(server):
    assert raw_request(server.url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405
    assert post(server.url, b"<x/>", path="/other")[0] == 404
    assert raw_request(server.url, b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")[0] == 400
    assert raw_request(server.url, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")[0] == 400
    huge_header = b"POST /RPC2 HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_request(server.url, huge_header)[0] in (400, 431)
    still_serving(server)


def test_slow_request_times_out(make_server):
    server = make_server("--read-timeout", "0.5")
    parts = urllib.parse.urlparse(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<methodCall>")
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 5
    still_serving(server)


def test_wrong_types_and_counts_are_xenapi_failures(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    assert fails(proxy.host.get_record(s, [host]))[0] == "FIELD_TYPE_ERROR"
    assert fails(proxy.host.add_to_other_config(s, host, "k", {"nested": "map"}))[0] == "FIELD_TYPE_ERROR"
    assert fails(proxy.host.get_record(s, host, host))[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    assert fails(proxy.host.get_record(["not", "a", "session"], host))[0] == "SESSION_INVALID"
    assert fails(proxy.event.next(s)) == ["SESSION_NOT_REGISTERED", s]
    bad_dt = xmlrpc.client.dumps((s, host, xmlrpc.client.DateTime("20260101T00:00:00")), "host.set_name_label")
    assert fails(xmlrpc.client.loads(post(server.url, bad_dt.encode())[1])[0][0]) == ["FIELD_TYPE_ERROR", "value"]
    still_serving(server)


def test_many_connections_and_pipelining(server):
    parts = urllib.parse.urlparse(server.url)
    body = xmlrpc.client.dumps(("root", ""), "session.login_with_password").encode()
    request = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request * 20)  # pipelined: answered in order, all of them
        data = b""
        while data.count(b"</methodResponse>") < 20:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 20
    socks = [socket.create_connection((parts.hostname, parts.port)) for _ in range(50)]
    still_serving(server)
    for s in socks:
        s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=2000))
def test_fuzz_bodies_never_break_the_server(server, junk):
    status, body = post(server.url, b"<methodCall><methodName>host.get_all</methodName>" + junk)
    assert status in (200, 400), body
    if status == 200:
        assert b"<name>Status</name>" in body


XML_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.lists(st.recursive(
    st.none() | st.booleans() | st.integers(-2**31, 2**31 - 1) | XML_TEXT | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(XML_TEXT, children, max_size=3),
    max_leaves=10), max_size=4), method=st.sampled_from(
    ["host.get_record", "host.set_name_label", "host.add_to_other_config", "host_cpu.get_all_records_where",
     "event.from", "task.cancel", "session.login_with_password", "Async.host_cpu.get_unassigned_cpus"]))
def test_fuzz_params_give_xenapi_failures(server, params, method):
    body = xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()
    status, text = post(server.url, body)
    assert status == 200
    reply = xmlrpc.client.loads(text)[0][0]
    if reply["Status"] == "Failure":
        assert reply["ErrorDescription"][0] != "INTERNAL_ERROR", reply
