"""Test fixtures: the real server in a subprocess on real sockets, driven by real clients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest
import vmkit
from hosts import HOSTS, Host, SimHost

ROOT = Path(__file__).resolve().parents[1]
LISTEN_TCP = re.compile(r"listening on (https?://\S+/)")
LISTEN_UNIX = re.compile(r"listening on unix socket (\S+)")

#: the image directory (--image-dir) of the servers the tests start: pytest's base temporary
#: directory, so a test may save to and restore from its own tmp_path (set once per session)
IMAGE_ROOT: list[Path] = []


class ServerProcess:
    """``xend-ext serve`` as a child process; knows its URLs once it has said where it listens."""

    def __init__(self, state_dir: Path, *extra: str, unix: bool = True, host: Host | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.host = host or SimHost()
        self.extra = list(extra)
        self.use_unix = unix
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.sock = ""
        self.log: list[str] = []
        self.image_root: Path | None = IMAGE_ROOT[0] if IMAGE_ROOT else None  # None: the server's default
        self.env: dict[str, str] = {}  # more environment for the server (e.g. tests/faultbackend.py's)

    @property
    def sock_url(self) -> str:
        """The form XenAPI.UDSTransport wants: the socket path with / written as _."""
        return "http://" + self.sock.replace("/", "_") + "/"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(self.state_dir)]
        if not any(a == "--listen" for a in self.extra):
            cmd += ["--listen", "127.0.0.1:0"]
        if self.use_unix and "--unix" not in self.extra:
            # short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp paths can be long
            sockdir = Path("/tmp") / f"xe-{os.getpid()}-{id(self) % 100000}"
            sockdir.mkdir(exist_ok=True)
            cmd += ["--unix", str(sockdir / "xapi.sock")]
        elif not self.use_unix:
            cmd += ["--unix", "none"]
        if self.image_root is not None and "--image-dir" not in self.extra:
            cmd += ["--image-dir", str(self.image_root)]
        extra = list(self.extra)
        return cmd + self.host.args(self.state_dir, extra) + extra

    def start(self, wait: bool = True) -> ServerProcess:
        self.log = []
        env = dict(os.environ, PYTHONUNBUFFERED="1", XEND_EXT_CHECK_ENCODING="1", **self.env)
        self.proc = subprocess.Popen(self.command(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, env=env)
        ready = threading.Event()
        expected = 1 if self.use_unix else 0

        def reader() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            seen_unix = 0
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                if m := LISTEN_TCP.search(line):
                    self.url = self.url or m.group(1)
                if m := LISTEN_UNIX.search(line):
                    self.sock = m.group(1)
                    seen_unix += 1
                if (self.url or "--listen" in self.extra) and seen_unix >= expected:
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if wait:
            if not ready.wait(30) or self.proc.poll() is not None:
                raise RuntimeError("server did not start:\n" + "\n".join(self.log))
        return self

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=True)

    def login(self, user: str = "root", password: str = "") -> tuple[xmlrpc.client.ServerProxy, str]:
        proxy = self.proxy()
        reply = proxy.session.login_with_password(user, password)
        assert reply["Status"] == "Success", reply
        return proxy, reply["Value"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        time.sleep(0.05)  # let the reader thread drain the last lines
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session", autouse=True)
def _image_root(tmp_path_factory):
    IMAGE_ROOT[:] = [tmp_path_factory.getbasetemp()]


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run the test on each of these hypervisor backends")
    config.addinivalue_line("markers", "realxen: runs on the emulated Xen machine (the real-Xen stage)")
    config.addinivalue_line("markers", "realkvm: runs on a private libvirtd with QEMU/KVM (the real-KVM stage)")


#: XEND_EXT_XL=all: every case of the shared suite that runs on libvirt runs on real Xen as well,
#: not only those marked ``on_xl`` (`make test` runs those, chosen for the stage's five minutes).
XL_ALL = os.environ.get("XEND_EXT_XL") == "all"


def pytest_generate_tests(metafunc):
    """``backend`` is parametrised by the closest ``backends`` mark (default: the simulated host)."""
    if "backend" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("backends")
        names = mark.args if mark else ("sim",)
        if XL_ALL and "libvirt" in names and "xl" not in names:
            names = (*names, "xl")
        # the real-Xen cases form their own stage (`make test` runs it alone: pytest -m realxen)
        on_xen = [pytest.mark.realxen, pytest.mark.timeout(300)]
        hosts = [pytest.param(HOSTS[n], id=n, marks=on_xen if n == "xl" else ()) for n in names]
        metafunc.parametrize("backend", hosts, scope="module", indirect=True)


def pytest_collection_modifyitems(config, items):
    """The real-Xen cases: those an ``on_xl(when=...)`` mark accepts (all with XEND_EXT_XL=all),
    less those an ``off_xl(reason, when=...)`` mark keeps off."""
    dropped = []
    for item in items:
        host = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        if getattr(host, "name", None) != "xl":
            continue
        mark = item.get_closest_marker("backends")
        marked = mark.kwargs if mark else {}
        params = {k: v for k, v in item.callspec.params.items() if k != "backend"}
        chosen, off = marked.get("xl_when"), marked.get("off_xl_when")
        if (not XL_ALL and chosen is not None and not chosen(**params)) or (
                "off_xl" in marked and (off is None or off(**params))):
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]


# The real-Xen stage's wall time (first phase of a test marked realxen to the last), printed at the
# end of the run.
_real_xen: list[tuple[float, float]] = []


def pytest_runtest_logreport(report):
    if "realxen" in report.keywords:
        _real_xen.append((report.start, report.stop))


def pytest_terminal_summary(terminalreporter):
    if _real_xen:
        tests = len(_real_xen) // 3  # setup, call and teardown each report
        wall = max(stop for _, stop in _real_xen) - min(start for start, _ in _real_xen)
        terminalreporter.write_line(f"real-Xen stage: {tests} tests, {wall:.0f} s wall from the machine's boot "
                                    "to the last of them")


@pytest.fixture(scope="module")
def backend(request) -> Host:
    """The hypervisor of the module's servers (parametrised above); the VMs that vmkit.new_vm
    makes meanwhile get what they need to boot there."""
    host = request.param
    vmkit.BOOT_FIELDS.clear()
    vmkit.BOOT_FIELDS.update(host.boot_fields())
    yield host
    vmkit.BOOT_FIELDS.clear()


@pytest.fixture
def make_server(tmp_path, request):
    """Factory: ``make_server(*args)`` starts a server on a fresh (or given) state dir, on the
    test's ``backend`` when it has one."""
    started: list[ServerProcess] = []
    default_host = request.getfixturevalue("backend") if "backend" in request.fixturenames else None

    def make(*extra: str, state_dir: Path | None = None, unix: bool = True, wait: bool = True,
             host: Host | None = None) -> ServerProcess:
        server = ServerProcess(state_dir or tmp_path / "state", *extra, unix=unix, host=host or default_host)
        started.append(server)
        return server.start(wait=wait)

    yield make
    for server in started:
        if server.alive():
            server.stop(signal.SIGKILL)


@pytest.fixture
def server(make_server) -> ServerProcess:
    return make_server()


@pytest.fixture
def faulty(tmp_path):
    """(server, faults, client): a server whose backend is wrapped in tests/faultbackend.py's
    fault-injecting stand-in, the test's handle on it, and a root XenAPI client."""
    from faultbackend import Faults

    faults = Faults(tmp_path / "faults")
    server = ServerProcess(tmp_path / "state", unix=False)
    server.env.update(faults.env())
    server.start()
    yield server, faults, vmkit.session(server).xenapi
    server.stop()


def ok(reply: dict):
    """The Value of a Success reply (assert on the envelope)."""
    assert reply["Status"] == "Success", reply
    return reply["Value"]


def fails(reply: dict) -> list[str]:
    assert reply["Status"] == "Failure", reply
    return reply["ErrorDescription"]
