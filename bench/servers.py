"""Starting, watching and stopping the servers under test.

Each server runs as its own process so that its CPU time can be read from
``/proc/<pid>/stat`` independently of the load generator's.  The time of
live child processes is added in, in case a server hands work to workers.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

XEND_EXT = "xend-ext"
REFERENCE = "reference"
SERVERS = (XEND_EXT, REFERENCE)
#: P1's floor: a bare protocol answering a fixed reply (bench/floor_server.py), beside xend-ext.
FLOOR = "floor"

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")
#: The directory holding the ``bench`` package, so ``-m bench.reference_server``
#: and ``-m xend_ext`` resolve whatever the caller's working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server exited or never accepted connections."""


def free_port() -> int:
    """Ask the kernel for an unused port; the small race is acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as stream:
        stat = stream.read()
    # comm may contain spaces or parentheses: fields resume after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _descendants(pid: int) -> list[int]:
    """Live children, grandchildren, ... of pid (threads' children included)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


@dataclass
class ServerProcess:
    """A running server: its process, address and scratch directory."""

    name: str
    objects: int
    port: int
    popen: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    log_path: Path
    command: list[str] = field(default_factory=list)
    #: Seconds from the process start to readiness: the first answered login if the
    #: server was started with ``login=True``, else the first accepted connection.
    ready_s: float = float("nan")

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (user + system)."""
        ticks = 0
        for pid in [self.popen.pid, *_descendants(self.popen.pid)]:
            try:
                ticks += _proc_cpu_ticks(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return ticks / _TICKS

    def cpu_seconds_fine(self) -> float:
        """CPU time of the server's threads so far, to the nanosecond (``/proc/<pid>/task/*/schedstat``;
        ``cpu_seconds`` counts clock ticks, too coarse for one event fan-out). Live children are
        not included; threads that ended are not either."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.popen.pid}/task")
        except FileNotFoundError:
            return math.nan
        for tid in tasks:
            try:
                with open(f"/proc/{self.popen.pid}/task/{tid}/schedstat", "rb") as stream:
                    total += int(stream.read().split()[0])
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                pass
        return total / 1e9

    def rss_bytes(self) -> int:
        """Resident memory of the server and its live children."""
        total = 0
        for pid in [self.popen.pid, *_descendants(self.popen.pid)]:
            try:
                with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as stream:
                    for line in stream:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                            break
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's stdout/stderr, for error reports."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def exit_report(self) -> str:
        """Why the server is gone: code and last log line first, then the tail.

        The last line of a Python traceback names the exception, which is
        what a reader of a one-line progress message needs.
        """
        tail = self.log_tail()
        last = tail.splitlines()[-1].strip() if tail.strip() else "(no output)"
        return f"exited with code {self.popen.poll()}: {last}\n{tail}"

    def stop(self) -> None:
        """SIGTERM, wait, and only then SIGKILL; always clean the scratch dir."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        finally:
            self.workdir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _command(name: str, objects: int, port: int, workdir: str, state_from: Path | None) -> list[str]:
    """The command line for one server kind, holding ``objects`` host_cpus.

    With ``state_from`` (a state directory, already copied into ``workdir`` for
    xend-ext), the reference serves the VMs of its snapshot.
    """
    if name == XEND_EXT:
        return [
            sys.executable, "-m", "xend_ext", "serve",
            "--state-dir", workdir,
            "--listen", f"{HOST}:{port}",
            "--unix", "none",
            "--backend", "sim",
            "--cpus", str(objects),
            "--auth", "none",
            # every bench client comes from one loopback address, and P5 holds 1,000 watchers
            "--max-connections", "2000", "--max-per-peer", "2000",
        ]  # fmt: skip
    if name == FLOOR:
        return [sys.executable, "-m", "bench.floor_server", "--host", HOST, "--port", str(port)]
    if name == REFERENCE:
        from bench.statedir import EXPORT_NAME  # the built state's objects in the per-object XML

        return [
            sys.executable, "-m", "bench.reference_server",
            "--host", HOST,
            "--port", str(port),
            "--state", os.path.join(workdir, "state.xml"),
            "--objects", str(objects),
            *(["--vms-from", str(state_from / EXPORT_NAME)] if state_from else []),
        ]  # fmt: skip
    raise ValueError(f"unknown server {name!r}")


def start(
    name: str,
    objects: int,
    state_from: Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
    login: bool = False,
    code: Path | None = None,
    extra: tuple[str, ...] = (),
) -> ServerProcess:
    """Launch a server and return once it accepts TCP connections.

    ``state_from``: a state directory to start from (xend-ext gets a copy, the
    reference reads its snapshot).  ``login``: wait for an answered login rather
    than an accepted connection, and time that (``ready_s``).  ``code``: run the
    server from another checkout of the project (another version, to compare).
    """
    workdir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
    port = free_port()
    log_path = Path(workdir.name) / "server.log"
    state_dir = os.path.join(workdir.name, "state")
    if state_from is not None and name == XEND_EXT:
        shutil.copytree(state_from, state_dir)
    else:
        os.mkdir(state_dir)
    command = _command(name, objects, port, state_dir, state_from) + list(extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code or REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as log:
        began = time.monotonic()
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=str(code) if code else os.getcwd(),  # python -m puts the working directory first
        )
    server = ServerProcess(name, objects, port, popen, workdir, log_path, command)
    try:
        _wait_ready(server, timeout)
        if login:
            _wait_login(server, began + timeout)
        server.ready_s = time.monotonic() - began
    except BaseException:
        server.stop()
        raise
    return server


class _PatientTransport(xmlrpc.client.Transport):
    """A socket timeout, so that a wedged server cannot hang the bench."""

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        conn = super().make_connection(host)
        conn.timeout = 60.0
        return conn


def _wait_login(server: ServerProcess, deadline: float) -> None:
    """Log in until a session is returned: a server may accept before it answers."""
    proxy = xmlrpc.client.ServerProxy(f"http://{HOST}:{server.port}/RPC2", _PatientTransport(), allow_none=True)
    while True:
        if server.popen.poll() is not None:
            raise ServerStartError(f"{server.name} {server.exit_report()} during startup")
        try:
            reply = proxy.session.login_with_password("root", "")
            if isinstance(reply, dict) and reply.get("Status") == "Success":
                return
        except (OSError, xmlrpc.client.Error):
            pass
        if time.monotonic() >= deadline:
            raise ServerStartError(f"{server.name} answered no login within the time allowed")
        time.sleep(0.01)


def _wait_ready(server: ServerProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll until the port accepts connections or the process gives up.

    The port, not the "listening" log line, is the readiness signal: the
    line's wording may change, a refused connection cannot.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.popen.poll()
        if code is not None:
            raise ServerStartError(f"{server.name} {server.exit_report()} during startup")
        try:
            with socket.create_connection((HOST, server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(
        f"{server.name} not accepting on {HOST}:{server.port} after {timeout:.0f} s:\n{server.log_tail()}"
    )
