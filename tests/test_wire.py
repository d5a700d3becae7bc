"""The wire as API.md §1 says, through the official XenAPI client and raw XML-RPC."""

from __future__ import annotations

import http.client
import urllib.parse
import xmlrpc.client

import pytest
import XenAPI
from conftest import fails, ok
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_ext.wire import BadRequest, dumps_response, encode_value, fast_request, loads_request, success


def test_official_client_tcp_login_and_records(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "", "1.0", "tests")
    try:
        records = session.xenapi.host.get_all_records()
        assert len(records) == 1
        (ref, rec), = records.items()
        assert ref.startswith("OpaqueRef:")
        assert rec["API_version_major"] == "2"
        assert len(rec["host_CPUs"]) == 8
        assert rec["free_cpus"] == "0"  # all in Pool-0
        cpus = session.xenapi.host_cpu.get_all_records()
        assert sorted(int(c["number"]) for c in cpus.values()) == list(range(8))
        assert all(c["host"] == ref for c in cpus.values())
    finally:
        session.xenapi.session.logout()


def test_official_client_unix_socket(server):
    session = XenAPI.Session(server.sock_url, transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "")
    assert len(session.xenapi.host.get_all_records()) == 1
    session.xenapi.session.logout()


def test_stale_session_is_session_invalid(server):
    proxy, session = server.login()
    ok(proxy.session.logout(session))
    assert fails(proxy.host.get_all(session)) == ["SESSION_INVALID", session]
    assert fails(proxy.host.get_all("OpaqueRef:nonsense")) == ["SESSION_INVALID", "OpaqueRef:nonsense"]


def test_official_client_relogs_in_after_session_invalid(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "")
    server.proxy().session.logout(session._session)  # the session dies behind the client's back
    assert len(session.xenapi.host.get_all()) == 1  # XenAPI.py logs in again on SESSION_INVALID


def test_bad_ref_is_handle_invalid(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "")
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.host.get_record("OpaqueRef:00000000-0000-0000-0000-000000000000")
    assert err.value.details == ["HANDLE_INVALID", "host", "OpaqueRef:00000000-0000-0000-0000-000000000000"]
    cpu = session.xenapi.host_cpu.get_all()[0]
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.host.get_record(cpu)  # a ref of another class
    assert err.value.details == ["HANDLE_INVALID", "host", cpu]


def test_wrong_argument_count(server):
    proxy, s = server.login()
    assert fails(proxy.host.get_record(s)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "host.get_record", "1", "0"]
    host = ok(proxy.host.get_all(s))[0]
    assert fails(proxy.host.get_record(s, host, "extra")) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "host.get_record", "1", "2"]
    assert fails(proxy.host.get_all()) == ["SESSION_INVALID", ""]  # no session at all
    # login takes 2 to 4 arguments
    assert fails(proxy.session.login_with_password("root")) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "1"]
    assert fails(proxy.session.login_with_password("a", "b", "1.1", "o", "x")) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "4", "5"]
    for args in (("root", ""), ("root", "", "1.1"), ("root", "", "1.1", "me")):
        ok(proxy.session.login_with_password(*args))


def test_unknown_method(server):
    proxy, s = server.login()
    assert fails(proxy.host.fly(s)) == ["MESSAGE_METHOD_UNKNOWN", "host.fly"]
    assert fails(proxy.nosuchclass.get_all(s)) == ["MESSAGE_METHOD_UNKNOWN", "nosuchclass.get_all"]
    # accessors are synchronous only
    assert fails(getattr(proxy, "Async.host.get_record")(s, "x")) == [
        "MESSAGE_METHOD_UNKNOWN", "Async.host.get_record"]


def test_bare_uuid_accepted_as_ref(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    uuid = ok(proxy.host.get_uuid(s, host))
    assert host == "OpaqueRef:" + uuid or host.startswith("OpaqueRef:")
    assert ok(proxy.host.get_record(s, uuid))["uuid"] == uuid
    assert ok(proxy.host.get_by_uuid(s, uuid)) == host
    assert fails(proxy.host.get_by_uuid(s, "not-a-uuid")) == ["UUID_INVALID", "host", "not-a-uuid"]


def test_ints_are_strings_on_the_wire(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    body = xmlrpc.client.dumps((s, host), "host.get_record").encode()
    url = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    text = conn.getresponse().read().decode()
    assert "<int>" not in text and "<i4>" not in text and "<i8>" not in text
    assert "<name>API_version_major</name><value><string>2</string></value>" in text
    # and inputs accept both an int and a decimal string
    cpu_numbers = ok(proxy.host_cpu.get_all_records_where(s, 'field "number"="3"'))
    assert len(cpu_numbers) == 1


def test_wrong_types(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    assert fails(proxy.host.set_name_label(s, host, True)) == ["FIELD_TYPE_ERROR", "value"]
    assert fails(proxy.host.set_other_config(s, host, ["a"])) == ["FIELD_TYPE_ERROR", "value"]
    assert fails(proxy.host.get_record(s, 12)) == ["FIELD_TYPE_ERROR", "self"]
    assert fails(proxy.host.get_all_records_where(s, {"x": 1})) == ["FIELD_TYPE_ERROR", "expr"]


def test_keep_alive_both_paths(server):
    url = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    for path in ("/", "/RPC2", "/", "/RPC2"):
        conn.request("POST", path, xmlrpc.client.dumps(("root", ""), "session.login_with_password").encode(),
                     {"Content-Type": "text/xml"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Connection") == "keep-alive"
        reply = xmlrpc.client.loads(resp.read())[0][0]
        assert ok(reply).startswith("OpaqueRef:")
    assert conn.sock is not None  # one connection served all four


def test_generic_accessors_and_maps(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    ok(proxy.host.set_name_label(s, host, "web-host"))
    assert ok(proxy.host.get_name_label(s, host)) == "web-host"
    assert ok(proxy.host.get_by_name_label(s, "web-host")) == [host]
    ok(proxy.host.add_to_other_config(s, host, "rack", "7"))
    assert fails(proxy.host.add_to_other_config(s, host, "rack", "8")) == [
        "MAP_DUPLICATE_KEY", "host", "other_config", host, "rack"]
    assert ok(proxy.host.get_other_config(s, host)) == {"rack": "7"}
    ok(proxy.host.remove_from_other_config(s, host, "rack"))
    ok(proxy.host.remove_from_other_config(s, host, "rack"))  # absent: nothing to do
    assert ok(proxy.host.get_other_config(s, host)) == {}
    # read-only fields have no setter
    assert fails(proxy.host.set_sched_policy(s, host, "credit2")) == ["MESSAGE_METHOD_UNKNOWN",
                                                                      "host.set_sched_policy"]


def test_get_all_records_where(server):
    proxy, s = server.login()
    where = proxy.host_cpu.get_all_records_where
    assert len(ok(where(s, 'field "number"="1" or field "number"="2"'))) == 2
    assert len(ok(where(s, 'not (field "number"="1" or field "number"="2")'))) == 6
    assert len(ok(where(s, 'field "vendor"="GenuineSim" and field "number"="7"'))) == 1
    assert len(ok(where(s, "true"))) == 8
    assert len(ok(where(s, "false"))) == 0
    err = fails(where(s, 'field "nosuch"="1"'))
    assert err[0] == "INVALID_VALUE" and err[1] == 'field "nosuch"="1"' and "nosuch" in err[2]
    assert fails(where(s, 'field "number"='))[0] == "INVALID_VALUE"


def test_list_methods(server):
    proxy, s = server.login()
    raw = proxy.system.listMethods()
    assert isinstance(raw, list)  # not wrapped, as XAPI does
    wrapped = ok(proxy.host.list_methods(s))
    assert wrapped == raw
    for name in ("session.login_with_password", "host.get_record", "host.add_to_other_config",
                 "host_cpu.get_unassigned_cpus", "event.from", "task.cancel", "Async.host_cpu.get_unassigned_cpus"):
        assert name in raw
    # every listed name answers (with something other than MESSAGE_METHOD_UNKNOWN)
    for name in raw:
        if name.startswith("system.") or name in ("event.next", "session.logout"):
            continue
        reply = getattr(proxy, name)(s)
        if reply["Status"] == "Failure":
            assert reply["ErrorDescription"][0] != "MESSAGE_METHOD_UNKNOWN", name


def test_async_task(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "")
    task = session.xenapi.Async.host.list_methods()
    assert task.startswith("OpaqueRef:")
    events = getattr(session.xenapi.event, "from")(["task/" + task], "", 5.0)
    for _ in range(50):
        rec = session.xenapi.task.get_record(task)
        if rec["status"] != "pending":
            break
        events = getattr(session.xenapi.event, "from")(["task/" + task], events["token"], 5.0)
    assert rec["status"] == "success"
    assert rec["progress"] == 1.0
    assert rec["result"].startswith("<value>") and "<value><string>host.get_record</string></value>" in rec["result"]
    assert rec["owner"] == "root"
    session.xenapi.task.destroy(task)
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.task.get_record(task)
    assert err.value.details[0] == "HANDLE_INVALID"


def test_async_failure_lands_in_task(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "")
    # errors found before the task exists are ordinary failures
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.Async.host_cpu.get_unassigned_cpus("extra")
    assert err.value.details[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.task.cancel("OpaqueRef:nope")
    assert err.value.details == ["HANDLE_INVALID", "task", "OpaqueRef:nope"]


def test_official_client_api_version(server):
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", "")
    assert session.API_version == "2.0"  # pool.get_all -> pool.get_master -> host.get_API_version_*
    pool = session.xenapi.pool.get_all()[0]
    assert session.xenapi.pool.get_master(pool) == session.xenapi.host.get_all()[0]


# -- the request parser's fast path reads what expat reads --------------------------------------

_SCALARS = st.one_of(st.text(), st.integers(-2**31, 2**31 - 1), st.booleans(), st.none(),
                     st.floats(allow_nan=False, allow_infinity=False))
_PARAMS = st.lists(st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3),
                             st.lists(st.lists(_SCALARS, max_size=2), max_size=2),
                             st.dictionaries(st.text(), _SCALARS, max_size=2)), max_size=4)
_SPLICES = [b"", b"<", b">", b"&", b"&amp;", b"\r", b"\x00", b"\x1f", b"\x7f", b"\x85", b"]]>", b" ", b"\xff",
            b"\xef\xbf\xbe", b"<value>", b"</value>", b"<nil/>", b"<!-- c -->", b"<string>", b"<int>1</i4>",
            b"<?xml version='1.0' encoding='latin-1'?>", b"<value><i8>-9223372036854775808</i8></value>",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]>"]


def _parsed(body: bytes, fast: bool):
    try:
        return repr(loads_request(body, fast=fast))
    except BadRequest as exc:
        return f"BadRequest: {exc}" if not fast else "BadRequest"


@settings(max_examples=400, deadline=None)
@given(_PARAMS, st.data())
def test_fast_request_parser_agrees_with_expat(params, data):
    """Requests as xmlrpc.client writes them, and the same with bytes spliced in anywhere: the
    fast path gives exactly expat's values, or hands the body to expat (same error)."""
    body = xmlrpc.client.dumps(tuple(params), "VM.get_record", allow_none=True).encode("utf-8", "surrogatepass")
    for candidate in (body, _spliced(body, data)):
        expected = _parsed(candidate, fast=False)
        got = _parsed(candidate, fast=True)
        assert got == (expected if not expected.startswith("BadRequest") else "BadRequest"), candidate


def _spliced(body: bytes, data) -> bytes:
    start = data.draw(st.integers(0, len(body)))
    end = data.draw(st.integers(start, min(len(body), start + 3)))
    return body[:start] + data.draw(st.sampled_from(_SPLICES)) + body[end:]


def test_fast_request_parser_takes_the_common_request():
    """The official client's requests are the fast path's (not handed to expat): a string, a
    double, an array of strings."""
    body = xmlrpc.client.dumps(("OpaqueRef:s", ["VM", "host"], "", 30.0, 7, True), "event.from").encode()
    assert fast_request(body) == ("event.from", ("OpaqueRef:s", ["VM", "host"], "", 30.0, 7, True))
    assert fast_request(body.replace(b"<string>VM</string>", b"<string>V&amp;M</string>")) is None


def test_shared_reply_is_the_reply_of_its_own_value():
    """A reply made once for many watchers (the last Encoded value's) is never given for another
    value."""
    first, second = encode_value({"token": "1"}), encode_value({"token": "2"})
    general = [{"Status": "Success", "Value": {"token": t}} for t in ("1", "2")]
    for value, expected in [(first, general[0]), (second, general[1]), (first, general[0]), (first, general[0])]:
        reply = dumps_response(success(value))
        assert xmlrpc.client.loads(reply)[0][0] == expected
    assert dumps_response(success(first)) is dumps_response(success(first))  # made once, not per watcher


# -- liberal in what it reads, strict in what it sends (docs/api/wire.md) ---------------------

def _post(server, body: str, path: str = "/RPC2") -> tuple[int, str]:
    url = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("POST", path, body.encode(), {"Content-Type": "text/xml"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def _call(method: str, *values: str) -> str:
    """A methodCall written by hand, each param's <value> content as given (as other languages send them)."""
    params = "".join(f"<param><value>{v}</value></param>" for v in values)
    return (f"<?xml version='1.0'?><methodCall xmlns:ex='http://ws.apache.org/xmlrpc/namespaces/extensions'>"
            f"<methodName>{method}</methodName><params>{params}</params></methodCall>")


def test_every_string_is_sent_typed(server):
    """Go's kolo/xmlrpc and Java's aXMLRPC refuse a bare <value>text</value>: none is sent, in a
    plain reply, a cached record, a failure or a task's record."""
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    for body in (_call("host.get_record", f"<string>{s}</string>", f"<string>{host}</string>"),
                 _call("host.get_all_records", f"<string>{s}</string>"),
                 _call("host.get_name_label", f"<string>{s}</string>", f"<string>{host}</string>"),
                 _call("host.get_record", f"<string>{s}</string>", "<string>OpaqueRef:nope</string>")):
        status, text = _post(server, body)
        assert status == 200
        bare = [v for v in text.split("<value>")[1:] if not v.startswith("<")]
        assert bare == [], bare[:3]
    assert "<value><string>Success</string></value>" in text or "Failure" in text


def test_a_string_parameter_takes_a_number_as_the_text_it_was_sent_with(server):
    """Perl's RPC::XML sends "1.0" as <double> and "007" or "6" as <int>."""
    status, text = _post(server, _call("session.login_with_password", "<string>root</string>", "<string></string>",
                                       "<double>1.0</double>", "<string>perl</string>"))
    assert status == 200 and "Success" in text, text
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    for sent, read in (("<int>007</int>", "007"), ("<i4>6</i4>", "6"), ("<i8>12</i8>", "12"),
                       ("<double>1.50</double>", "1.50"), ("<ex:i8>9</ex:i8>", "9")):
        status, text = _post(server, _call("host.set_name_label", f"<string>{s}</string>", f"<string>{host}</string>",
                                           sent))
        assert status == 200 and "Success" in text, text
        assert ok(proxy.host.get_name_label(s, host)) == read
    # an int parameter still reads a number as a number, and a bool is not a string
    assert fails(proxy.host.set_name_label(s, host, False)) == ["FIELD_TYPE_ERROR", "value"]


def test_nil_is_the_empty_value_of_the_parameter_type(server):
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    for nil in ("<nil/>", "<ex:nil/>"):
        status, text = _post(server, _call("host.get_all", nil))
        assert status == 200, text
        assert xmlrpc.client.loads(text)[0][0]["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:NULL"]
        status, text = _post(server, _call("host.set_name_label", f"<string>{s}</string>", f"<string>{host}</string>",
                                           nil))
        assert status == 200 and "Success" in text, text
        assert ok(proxy.host.get_name_label(s, host)) == ""
        status, text = _post(server, _call("host.set_other_config", f"<string>{s}</string>",
                                           f"<string>{host}</string>", nil))
        assert "Success" in text and ok(proxy.host.get_other_config(s, host)) == {}
        # a reference that may not be empty: the null ref is not an object
        status, text = _post(server, _call("host.get_record", f"<string>{s}</string>", nil))
        assert xmlrpc.client.loads(text)[0][0]["ErrorDescription"] == ["HANDLE_INVALID", "host", "OpaqueRef:NULL"]
