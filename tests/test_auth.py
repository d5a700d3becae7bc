"""Sessions and roles: auth none and the scrypt password file, with every message role-checked."""

from __future__ import annotations

import subprocess
import sys

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
