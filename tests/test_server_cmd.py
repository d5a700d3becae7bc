"""The ``xend-ext serve`` command: listeners, logging, signals, the state-dir lock, TLS."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest
import trustme
import XenAPI
from conftest import ROOT, ServerProcess, ok


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


# -- running it as a service (issue 19) ------------------------------------------------------

def _curl(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-i", *args, url], capture_output=True, text=True, timeout=30)


def _xm(server, *args: str, user: str = "root", password: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    return subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "--url", server.url, "-u", user, "-p", password,
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_settings_file_with_flags_overriding_it(make_server, tmp_path):
    config = tmp_path / "xend-ext.toml"
    config.write_text('cpus = 4\nmemory = 8192\nlisten = ["127.0.0.1:0"]\nlog-level = "debug"\n'
                      f'audit-log = "{tmp_path / "audit"}"\n')
    server = make_server("--config", str(config), "--cpus", "6")
    info = json.loads(_xm(server, "info", "--json").stdout)
    assert info["nr_cpus"] == "6"  # the flag
    assert info["total_memory"] == "8192"  # the file
    assert (tmp_path / "audit").exists()


@pytest.mark.parametrize("text, says", [
    ("cpu = 4\n", "unknown setting 'cpu'"),
    ("cpus = \"four\"\n", "cpus cannot be 'four'"),
    ("sim-reboot = 1\n", "sim-reboot is true or false"),
    ("backend = \"vmware\"\n", "backend must be one of sim, libvirt, xl"),
    ("cpus = [\n", "not valid TOML"),
])
def test_bad_settings_file_is_one_line(tmp_path, text, says):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = subprocess.run([sys.executable, "-m", "xend_ext", "serve", "--config", str(config), "--state-dir",
                             str(tmp_path / "s")], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"xend-ext: cannot start: {config}: ")
    assert says in result.stderr


def test_contrib_settings_file_has_every_serve_flag(tmp_path):
    """contrib/xend-ext.toml names every flag of ``serve``, and uncommented it is a valid file."""
    from xend_ext import main as server_main
    from xend_ext import settings

    parser = server_main.build_parser()
    flags = set(re.findall(r"\[--([a-z-]+)", parser.serve_parser.format_usage())) - {"config"}
    text = (ROOT / "contrib" / "xend-ext.toml").read_text()
    keys = set(re.findall(r"^# ([a-z-]+) = ", text, re.M))
    assert flags == keys
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"^# ([a-z-]+ = )", r"\1", text, flags=re.M))
    args = parser.parse_args(["serve", "--config", str(uncommented)])
    settings.apply_file(args, parser.serve_parser, ["serve", "--config", str(uncommented)])
    assert args.listen == ["127.0.0.1:9363"] and args.cpus == 8 and args.read_timeout == 30.0
    assert args.sim_reboot is False and args.state_dir == Path("/var/lib/xend-ext")


def test_ready_notification_to_systemd(make_server, tmp_path):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET once the server listens."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(30)
        server = ServerProcess(tmp_path / "state")
        server.env["NOTIFY_SOCKET"] = str(path)
        server.start(wait=False)
        try:
            message = listener.recv(4096).decode()
            assert "READY=1" in message.splitlines()
            assert f"MAINPID={server.proc.pid}" in message.splitlines()
            # ready means ready: a client gets in right away
            assert _xm(server, "info").returncode == 0 if server.url else True
        finally:
            server.stop()


def test_log_lines_have_time_and_level(server):
    stamped = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z xend-ext (DEBUG|INFO|WARNING|ERROR) ")
    assert server.log and all(stamped.match(line) for line in server.log if "listening on" in line)


def test_audit_log_of_changes_and_failed_logins(make_server, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", "ops", "--role", "pool-admin", "--state-dir",
                    str(state), "--password-stdin"], input="pw\n", text=True, check=True, capture_output=True)
    server = make_server("--auth", "file", state_dir=state)
    cfg = tmp_path / "a.cfg"
    cfg.write_text('name = "audited"\nmemory = 128\nvcpus = 1\n')
    assert _xm(server, "new", str(cfg), user="ops", password="pw").returncode == 0
    assert _xm(server, "mem-set", "audited", "999999", user="ops", password="pw").returncode == 1
    assert _xm(server, "list", user="ops", password="pw").returncode == 0  # a read: not audited
    assert _xm(server, "info", user="mallory", password="guess").returncode == 1
    server.stop()
    lines = (state / "audit.log").read_text().splitlines()
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert len(lines) == 3, lines
    assert re.fullmatch(when + r" user=ops call=VM\.create result=ok", lines[0])
    assert re.fullmatch(when + r" user=ops call=VM\.set_memory target=OpaqueRef:\S+ result=VALUE_NOT_SUPPORTED",
                        lines[1])
    assert re.fullmatch(when + r" user=mallory call=session\.login_with_password result=SESSION_AUTHENTICATION_FAILED",
                        lines[2])
    assert "guess" not in "\n".join(lines)


def test_audit_line_of_an_acknowledged_change_survives_kill_9(server):
    """Each change's line is in the file when its reply arrives, before any stop or flush."""
    proxy, session = server.login()
    host = proxy.host.get_all(session)["Value"][0]
    audit = server.state_dir / "audit.log"
    for n in range(20):
        assert proxy.host.add_to_other_config(session, host, f"k{n}", "v")["Status"] == "Success"
        assert len(audit.read_text().splitlines()) == n + 1
    server.kill9()
    lines = audit.read_text().splitlines()
    assert len(lines) == 20 and all(line.endswith(f"call=host.add_to_other_config target={host} result=ok")
                                    for line in lines)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_metrics_endpoint(server):
    before = _curl(server.url + "metrics").stdout.split("\n\n", 1)[1]
    proxy, session = server.login()
    proxy.host.get_all(session)
    proxy.VM.start(session, "OpaqueRef:nonexistent", False, False)
    proxy.event.register(session, ["VM"])
    for n in range(3):  # names a client makes up are one series, not one each
        getattr(proxy, f"made.up{n}")(session)
    result = _curl(server.url + "metrics")
    head, text = result.stdout.split("\n\n", 1)
    assert head.startswith("HTTP/1.1 200") and "text/plain; version=0.0.4" in head
    calls = 'xend_ext_calls_total{method="host.get_all"}'
    assert _metric(text, calls) == (_metric(before, calls) if calls in before else 0) + 1
    assert _metric(text, 'xend_ext_errors_total{code="HANDLE_INVALID"}') >= 1
    assert _metric(text, 'xend_ext_calls_total{method="(unknown)"}') >= 3 and "made.up" not in text
    assert _metric(text, "xend_ext_sessions") >= 1
    assert _metric(text, "xend_ext_event_registrations") == 1
    assert _metric(text, "xend_ext_journal_fsyncs_total") >= 1
    count = _metric(text, "xend_ext_call_duration_seconds_count")
    assert _metric(text, 'xend_ext_call_duration_seconds_bucket{le="+Inf"}') == count >= 4
    assert "# TYPE xend_ext_call_duration_seconds histogram" in text


def test_get_slash_says_what_this_is(server):
    result = _curl(server.url)
    head, body = result.stdout.split("\n\n", 1)
    assert head.startswith("HTTP/1.1 200") and "text/html" in head
    assert "xend-ext" in body and "POST /" in body and server.url in body and "/metrics" in body
    assert _curl(server.url, "-X", "PUT").stdout.startswith("HTTP/1.1 405")


def test_package_installs_only_the_server_packages(tmp_path):
    """setuptools' own list of what the package installs (top_level.txt, as the wheel's)."""
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], check=True,
                   capture_output=True, timeout=120, cwd=ROOT)
    (info,) = tmp_path.glob("*.egg-info")
    assert set((info / "top_level.txt").read_text().split()) == {"xend_ext", "xenapi_classes"}
    sources = (info / "SOURCES.txt").read_text().split()
    assert not [s for s in sources if s.startswith(("bench/", "schemas/", "tests/"))]


def test_systemd_unit_is_valid(tmp_path):
    """contrib/xend-ext.service as systemd reads it (its ExecStart pointed at this checkout's command)."""
    unit = (ROOT / "contrib" / "xend-ext.service").read_text()
    assert "Type=notify" in unit and "ExecStart=/usr/local/bin/xend-ext serve --config " in unit
    command = Path(sys.executable).with_name("xend-ext")
    (tmp_path / "xend-ext.service").write_text(unit.replace("/usr/local/bin/xend-ext", str(command)))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "xend-ext.service")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
