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
    assert raw_request(server.url, b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405  # GET / is the index page
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


# -- resource exhaustion: issue 16, items 1, 2 and 5 ------------------------------------------------

def frame(method: str, *params) -> bytes:
    body = xmlrpc.client.dumps(params, method).encode()
    return b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def answers_within(server, seconds: float, **connect) -> None:
    """A normal call on a fresh connection answers at once (a generous bound: a lock-out would hang)."""
    parts = urllib.parse.urlparse(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=seconds, **connect) as sock:
        sock.sendall(frame("session.login_with_password", "root", ""))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def send_until_held(sock: socket.socket, data: bytes, patience: float = 2.0) -> int:
    """Send what the server takes; stop when it has taken nothing for ``patience`` seconds."""
    sock.setblocking(False)
    sent, last = 0, time.monotonic()
    while sent < len(data) and time.monotonic() - last < patience:
        try:
            sent += sock.send(data[sent:sent + 65536])
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.02)
    sock.setblocking(True)
    return sent


def read_replies(sock: socket.socket, count: int) -> int:
    """Read until ``count`` whole XML-RPC replies have arrived (or the server closes)."""
    marker, seen, tail = b"</methodResponse>", 0, b""
    while seen < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data = tail + chunk
        seen += data.count(marker)
        tail = data[-(len(marker) - 1):]  # too short to hold a whole marker: none is counted twice
    return seen


def test_pipelining_flood_that_never_reads_is_held_back(server):
    """Pipelined requests on one connection that reads nothing (30,000 took 367 MB before): the
    server stops reading it once its unsent replies pass the high-water mark; memory stays flat."""
    from stress.load import rss_kib

    request = frame("system.listMethods")
    parts = urllib.parse.urlparse(server.url)
    still_serving(server)
    before = rss_kib(server.proc.pid)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sent = send_until_held(sock, request * 100_000)
        assert sent < len(request) * 100_000, "the server should have stopped reading"
        grown = rss_kib(server.proc.pid) - before
        answers_within(server, 1.0)
        assert grown < 30 << 10, f"server RSS grew by {grown} KiB"
        # reading again resumes it: the replies come, through many pause/resume rounds
        assert read_replies(sock, 2_000) >= 2_000
    still_serving(server)


def connect(server, source: str = "127.0.0.1") -> socket.socket:
    parts = urllib.parse.urlparse(server.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5, source_address=(source, 0))


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def unix_call(server) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(server.sock)
        sock.sendall(frame("session.login_with_password", "root", ""))
        return sock.recv(65536)


def test_idle_connection_flood_locks_nobody_out(make_server):
    """1,030 TCP connections that send nothing (a 5-minute lock-out before): one address holds at
    most --max-per-peer, the idle ones make room for newcomers, and all are closed once the
    first-byte deadline passes. Other addresses, the same address and the Unix socket get in."""
    server = make_server("--first-byte-timeout", "2")
    idle = [connect(server) for _ in range(1030)]
    answers_within(server, 1.0)
    answers_within(server, 1.0, source_address=("127.0.0.2", 0))
    assert unix_call(server).startswith(b"HTTP/1.1 200 OK")
    assert sum(closed_by_server(sock, 0.01) for sock in idle) >= 1030 - 100  # evicted for newer ones
    time.sleep(3)
    assert all(closed_by_server(sock, 1) for sock in idle)
    for sock in idle:
        sock.close()
    still_serving(server)


def test_busy_connections_get_503_past_the_limits_and_the_unix_socket_keeps_room(make_server):
    """Connections in the middle of a request are not idle: past the per-address limit and the
    listener's limit a newcomer gets 503, while the Unix socket, counted apart, still answers."""
    server = make_server("--max-connections", "8", "--max-per-peer", "5")
    started = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<methodCall>"
    busy = []
    for source in ("127.0.0.1",) * 5 + ("127.0.0.2",) * 3:
        busy.append(connect(server, source))
        busy[-1].sendall(started)
    time.sleep(0.2)
    for source in ("127.0.0.1", "127.0.0.3"):  # one address full; the listener full
        with connect(server, source) as sock:
            sock.sendall(frame("session.login_with_password", "root", ""))
            assert sock.recv(4096).startswith(b"HTTP/1.1 503")
    assert unix_call(server).startswith(b"HTTP/1.1 200 OK")
    for sock in busy:
        sock.close()
    time.sleep(0.2)
    answers_within(server, 1.0)


def test_first_byte_deadline_is_short_and_keep_alive_stays(make_server):
    server = make_server("--first-byte-timeout", "0.5")
    silent, kept = connect(server), connect(server)
    kept.sendall(frame("session.login_with_password", "root", ""))
    assert kept.recv(65536).startswith(b"HTTP/1.1 200 OK")
    assert closed_by_server(silent, 3)  # closed without an answer: nothing was asked
    time.sleep(1)
    kept.sendall(frame("session.login_with_password", "root", ""))
    assert kept.recv(65536).startswith(b"HTTP/1.1 200 OK")
    silent.close()
    kept.close()


def listening(server) -> None:
    """Wait for the first "listening" line (the fixture does not when it is given --listen)."""
    deadline = time.monotonic() + 30
    while not server.url and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.url, server.log


def test_auth_none_refused_on_a_network_listener(make_server, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(tmp_path / "s"), "--unix", "none"]
    done = subprocess.run(command + ["--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "--insecure-no-auth" in done.stderr, done.stderr
    server = make_server("--listen", "127.0.0.1:0", "--listen", "0.0.0.0:0", "--insecure-no-auth", unix=False)
    listening(server)
    assert any("anyone who can reach it is pool-admin" in line for line in server.log)
    still_serving(server)
    server = make_server("--listen", "localhost:0", unix=False, state_dir=tmp_path / "quiet")
    listening(server)
    assert not any("pool-admin" in line for line in server.log)
