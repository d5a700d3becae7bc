"""Sessions and roles: auth none and the scrypt password file, with every message role-checked."""

from __future__ import annotations

import socket
import subprocess
import sys
import xmlrpc.client

import pytest
import XenAPI
from conftest import fails, ok


def add_user(state_dir, user, password, role):
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", user, "--role", role, "--state-dir", str(state_dir),
                    "--password-stdin"], input=password + "\n", text=True, check=True, capture_output=True)


@pytest.fixture
def file_server(make_server, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    add_user(state, "admin", "s3cret", "pool-admin")
    add_user(state, "op", "op-pw", "vm-operator")
    add_user(state, "viewer", "view", "read-only")
    return make_server("--auth", "file", state_dir=state)


def test_password_file_holds_scrypt_hashes(file_server):
    text = (file_server.state_dir / "passwd").read_text()
    assert "s3cret" not in text
    assert "admin:pool-admin:scrypt$" in text
    assert oct((file_server.state_dir / "passwd").stat().st_mode & 0o777) == "0o600"


def test_login_checks_password(file_server):
    proxy = file_server.proxy()
    assert fails(proxy.session.login_with_password("admin", "wrong")) == ["SESSION_AUTHENTICATION_FAILED"]
    assert fails(proxy.session.login_with_password("nobody", "x")) == ["SESSION_AUTHENTICATION_FAILED"]
    s = ok(proxy.session.login_with_password("admin", "s3cret"))
    assert ok(proxy.session.get_this_user(s, s)) == "admin"
    host = ok(proxy.session.get_this_host(s, s))
    assert ok(proxy.host.get_all(s)) == [host]
    record = ok(proxy.session.get_record(s, s))
    assert record["this_user"] == "admin" and record["role"] == "pool-admin"


def test_roles_are_enforced(file_server):
    proxy = file_server.proxy()
    viewer = ok(proxy.session.login_with_password("viewer", "view"))
    admin = ok(proxy.session.login_with_password("admin", "s3cret"))
    host = ok(proxy.host.get_all(viewer))[0]
    ok(proxy.host.get_record(viewer, host))  # reading is for everyone
    denied = fails(proxy.host.set_name_label(viewer, host, "x"))
    assert denied[0:2] == ["RBAC_PERMISSION_DENIED", "host.set_name_label"]
    assert "pool-admin" in denied[2]
    assert fails(proxy.host.add_to_other_config(viewer, host, "k", "v"))[0] == "RBAC_PERMISSION_DENIED"
    operator = ok(proxy.session.login_with_password("op", "op-pw"))
    assert fails(proxy.host.set_name_label(operator, host, "x"))[0] == "RBAC_PERMISSION_DENIED"
    ok(proxy.host.set_name_label(admin, host, "x"))
    # a read-only user may still use events and its own tasks
    ok(getattr(proxy.event, "from")(viewer, ["host"], "", 0.1))
    task = ok(getattr(proxy, "Async.host_cpu.get_unassigned_cpus")(viewer))
    ok(proxy.task.get_record(viewer, task))


def test_sessions_are_private(file_server):
    proxy = file_server.proxy()
    viewer = ok(proxy.session.login_with_password("viewer", "view"))
    admin = ok(proxy.session.login_with_password("admin", "s3cret"))
    assert fails(proxy.session.get_record(viewer, admin))[0] == "RBAC_PERMISSION_DENIED"
    assert ok(proxy.session.get_all(viewer)) == [viewer]
    assert set(ok(proxy.session.get_all(admin))) >= {viewer, admin}
    # a session's uuid is not a credential
    uuid = ok(proxy.session.get_uuid(viewer, viewer))
    assert fails(proxy.host.get_all(uuid)) == ["SESSION_INVALID", uuid]


def test_password_change_takes_effect_without_restart(file_server):
    add_user(file_server.state_dir, "viewer", "new-pw", "pool-admin")
    proxy = file_server.proxy()
    assert fails(proxy.session.login_with_password("viewer", "view")) == ["SESSION_AUTHENTICATION_FAILED"]
    s = ok(proxy.session.login_with_password("viewer", "new-pw"))
    host = ok(proxy.host.get_all(s))[0]
    ok(proxy.host.set_name_label(s, host, "promoted"))


def test_official_client_with_password(file_server):
    session = XenAPI.Session(file_server.url)
    with pytest.raises(XenAPI.Failure) as err:
        session.xenapi.login_with_password("admin", "bad")
    assert err.value.details == ["SESSION_AUTHENTICATION_FAILED"]
    session.xenapi.login_with_password("admin", "s3cret", "1.0", "pytest")
    assert len(session.xenapi.host.get_all()) == 1
    session.xenapi.logout()


def test_auth_none_makes_anyone_pool_admin(server):
    proxy = server.proxy()
    s = ok(proxy.session.login_with_password("whoever", "whatever"))
    host = ok(proxy.host.get_all(s))[0]
    ok(proxy.host.set_name_label(s, host, "mine"))
    assert ok(proxy.session.get_record(s, s))["role"] == "pool-admin"


def test_passwd_rejects_bad_names(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xend_ext", "passwd", "bad:name", "--state-dir", str(tmp_path),
                             "--password-stdin"], input="x\n", text=True, capture_output=True)
    assert result.returncode == 1 and "may not" in result.stderr


# -- tasks belong to their owner -----------------------------------------------------------------

TASK_CHANGES = [("set_other_config", ({"k": "v"},)), ("add_to_other_config", ("k2", "v")),
                ("remove_from_other_config", ("k",)), ("cancel", ()), ("destroy", ())]


def test_only_the_owner_or_a_pool_admin_changes_a_task(file_server):
    """A read-only or vm-operator user may read anyone's task but change only their own; a
    pool-admin may change any."""
    proxy = file_server.proxy()
    viewer = ok(proxy.session.login_with_password("viewer", "view"))
    operator = ok(proxy.session.login_with_password("op", "op-pw"))
    admin = ok(proxy.session.login_with_password("admin", "s3cret"))
    admins = ok(getattr(proxy, "Async.host_cpu.get_unassigned_cpus")(admin))
    ok(proxy.task.add_to_other_config(admin, admins, "k", "v"))
    before = ok(proxy.task.get_record(admin, admins))
    for intruder in (viewer, operator):
        ok(proxy.task.get_record(intruder, admins))  # reading is for everyone
        for message, args in TASK_CHANGES:
            denied = fails(getattr(proxy.task, message)(intruder, admins, *args))
            assert denied[:2] == ["RBAC_PERMISSION_DENIED", f"task.{message}"], (message, denied)
    assert ok(proxy.task.get_record(admin, admins)) == before
    own = ok(getattr(proxy, "Async.host_cpu.get_unassigned_cpus")(viewer))
    for message, args in TASK_CHANGES[:3]:
        ok(getattr(proxy.task, message)(viewer, own, *args))
    ok(proxy.task.add_to_other_config(admin, own, "by", "admin"))
    assert ok(proxy.task.get_other_config(viewer, own)) == {"k2": "v", "by": "admin"}
    ok(proxy.task.destroy(admin, own))


# -- session caps: per user, never at another user's expense ----------------------------------------

def _logins(server, user: str, count: int, batch: int = 32) -> list[str]:
    """``count`` logins of ``user`` pipelined over one connection; their refs."""
    host, port = server.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    body = xmlrpc.client.dumps((user, ""), "session.login_with_password").encode()
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    refs = []
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buffer = b""
        while len(refs) < count:
            n = min(batch, count - len(refs))
            sock.sendall(request * n)
            for _ in range(n):
                while b"\r\n\r\n" not in buffer:
                    buffer += sock.recv(1 << 16)
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(buffer) < length:
                    buffer += sock.recv(1 << 16)
                reply, buffer = buffer[:length], buffer[length:]
                answer = xmlrpc.client.loads(reply)[0][0]
                refs.append(answer["Value"] if answer["Status"] == "Success" else f"refused: {answer}")
    return refs


def test_a_user_at_the_session_cap_loses_only_their_own_oldest_session(server):
    from xenapi_classes.session import MAX_SESSIONS, MAX_SESSIONS_PER_USER

    proxy = server.proxy()
    alice = ok(proxy.session.login_with_password("alice", ""))
    bobs = _logins(server, "bob", MAX_SESSIONS_PER_USER + 1)
    assert all(ref.startswith("OpaqueRef:") for ref in bobs)
    assert fails(proxy.session.get_this_user(bobs[0], bobs[0]))[0] == "SESSION_INVALID"  # bob's oldest went
    assert ok(proxy.session.get_this_user(bobs[1], bobs[1])) == "bob"
    assert ok(proxy.session.get_this_user(alice, alice)) == "alice"
    # fill the server: a user with no session is refused, never at anyone else's expense
    users = [f"user{i}" for i in range((MAX_SESSIONS - 1 - MAX_SESSIONS_PER_USER) // MAX_SESSIONS_PER_USER)]
    for user in users:
        assert all(r.startswith("OpaqueRef:") for r in _logins(server, user, MAX_SESSIONS_PER_USER))
    rest = MAX_SESSIONS - 1 - MAX_SESSIONS_PER_USER * (1 + len(users))
    _logins(server, "last", rest)
    assert len(ok(proxy.session.get_all(alice))) == MAX_SESSIONS
    refused = fails(proxy.session.login_with_password("carol", ""))
    assert refused[0] == "OPERATION_NOT_ALLOWED" and "sessions" in refused[1]
    again = ok(proxy.session.login_with_password("bob", ""))  # bob has sessions: his least active makes room
    assert fails(proxy.session.get_this_user(bobs[2], bobs[2]))[0] == "SESSION_INVALID"  # bobs[1] was used since
    assert ok(proxy.session.get_this_user(bobs[1], bobs[1])) == "bob"
    assert ok(proxy.session.get_this_user(again, again)) == "bob"
    assert ok(proxy.session.get_this_user(alice, alice)) == "alice"
    assert len(ok(proxy.session.get_all(alice))) == MAX_SESSIONS
