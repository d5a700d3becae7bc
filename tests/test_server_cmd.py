"""The ``xend-ext serve`` command: listeners, logging, signals, the state-dir lock, TLS."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import xmlrpc.client

import pytest
import trustme
import XenAPI
from conftest import ROOT, ok


def test_one_log_line_per_listener_and_clean_sigterm(make_server):
    server = make_server("--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0")
    listening = [line for line in server.log if "listening on" in line]
    assert len(listening) == 3  # two TCP, one Unix
    assert os.path.exists(server.sock)
    assert server.stop(signal.SIGTERM) == 0
    assert not os.path.exists(server.sock)  # removed on the way out
    assert any("stopped" in line for line in server.log)


def test_sigint_is_clean_too(make_server):
    server = make_server()
    assert server.stop(signal.SIGINT) == 0


def test_listen_none_serves_only_the_socket(make_server):
    server = make_server("--listen", "none")
    assert server.url == ""
    session = XenAPI.Session(server.sock_url, transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "")
    assert len(session.xenapi.host.get_all()) == 1


def test_locked_state_dir_refused(make_server):
    first = make_server()
    second = subprocess.run([sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(first.state_dir),
                             "--listen", "127.0.0.1:0", "--unix", "none"], capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert second.returncode == 1
    assert "in use by another xend-ext server" in second.stderr
    assert str(first.proc.pid) in second.stderr
    assert first.alive()


def test_bad_options_say_what_is_wrong(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(tmp_path),
                             "--listen", "nonsense"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1 and "HOST:PORT" in result.stderr


def test_default_state_dir_from_environment(tmp_path):
    env = dict(os.environ, XEND_EXT_STATE=str(tmp_path / "envstate"))
    proc = subprocess.Popen([sys.executable, "-m", "xend_ext", "serve", "--listen", "none"], env=env,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stderr:
            if "listening on unix socket" in line:
                assert str(tmp_path / "envstate" / "xen-api.sock") in line
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_tls_listener(make_server, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    server = make_server("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert server.url.startswith("https://")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    proxy = xmlrpc.client.ServerProxy(server.url, context=context)
    s = ok(proxy.session.login_with_password("root", ""))
    assert len(ok(proxy.host.get_all(s))) == 1
    session = XenAPI.Session(server.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", "")
    assert len(session.xenapi.host.get_all()) == 1
    with pytest.raises(ssl.SSLError):  # an untrusted certificate is refused by a verifying client
        xmlrpc.client.ServerProxy(server.url).session.login_with_password("root", "")
