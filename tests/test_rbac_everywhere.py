"""Every message checks its role: a read-only session is refused each message above read-only,
before the message looks at its arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ServerProcess, ok

from xenapi_classes import build_registry
from xend_ext.datamodel import READ_ONLY

REGISTRY = build_registry()
GUARDED = sorted(name for name, (_, msg) in REGISTRY.methods.items() if msg.session and msg.role != READ_ONLY)


@pytest.fixture(scope="module")
def readonly_server(tmp_path_factory):
    state = tmp_path_factory.mktemp("rbac") / "state"
    state.mkdir()
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", "viewer", "--role", "read-only", "--state-dir",
                    str(state), "--password-stdin"], input="pw\n", text=True, check=True, capture_output=True)
    server = ServerProcess(state, "--auth", "file", unix=False).start()
    yield server
    server.stop()


def test_there_are_guarded_messages():
    assert "host.set_name_label" in GUARDED and "host.add_to_other_config" in GUARDED


@pytest.mark.parametrize("method", GUARDED)
def test_read_only_is_refused(readonly_server, method):
    proxy, s = readonly_server.login("viewer", "pw")
    msg = REGISTRY.methods[method][1]
    args = ["dummy"] * len(msg.params)
    reply = getattr(proxy, method)(s, *args)
    assert reply["Status"] == "Failure"
    assert reply["ErrorDescription"][:2] == ["RBAC_PERMISSION_DENIED", method.lower()]
    if msg.async_ok:
        reply = getattr(proxy, "Async." + method)(s, *args)
        assert reply["ErrorDescription"][:2] == ["RBAC_PERMISSION_DENIED", method.lower()]
    ok(proxy.session.logout(s))
