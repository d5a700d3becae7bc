"""A real etcd cluster for the pool tests: three ``etcd`` members (Debian's etcd-server, 3.4) on
loopback ports, each in its own directory under the test's temporary directory.

Elections are made fast (50 ms heartbeat, 500 ms election timeout: loopback has no latency) so a
cluster is up in about a second and survives the loss of one member within a second.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_ports(n: int) -> list[int]:
    """Ports the kernel has just handed out and taken back (bound together, so all distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    def __init__(self, name: str, data: Path, client_port: int, peer_port: int) -> None:
        self.name = name
        self.data = data
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.endpoint = f"127.0.0.1:{client_port}"
        self.proc: subprocess.Popen | None = None

    def start(self, initial_cluster: str, state: str = "new") -> None:
        log = open(self.data.with_suffix(".log"), "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [ETCD, "--name", self.name, "--data-dir", str(self.data),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
             "--initial-cluster-token", "xend-ext-test", "--heartbeat-interval", "50",
             "--election-timeout", "500", "--logger", "zap", "--log-level", "error"],
            stdout=log, stderr=log)
        log.close()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``EtcdCluster(tmp_path).start()``: three members; ``endpoints`` is what ``--cluster`` takes."""

    def __init__(self, root: Path, size: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * size)
        self.members = [Member(f"m{i}", root / f"etcd-m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        for m in self.members:
            m.start(self.initial)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline or any(not m.alive() for m in self.members):
                self.stop()
                logs = "\n".join(m.data.with_suffix(".log").read_text(errors="replace")[-2000:] for m in self.members)
                raise RuntimeError(f"etcd cluster did not come up:\n{logs}")
            time.sleep(0.1)
        return self

    def etcdctl(self, *args: str, endpoints: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["etcdctl", "--endpoints", endpoints or self.endpoints, "--command-timeout=3s", *args],
                              capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def healthy(self) -> bool:
        return self.etcdctl("endpoint", "health").returncode == 0

    def stop(self) -> None:
        for m in self.members:
            m.kill9()


class Pool:
    """An etcd cluster and ``size`` xend-ext servers (simulated hosts) joined to it."""

    def __init__(self, root: Path, size: int = 3, *extra: str) -> None:
        from conftest import ServerProcess

        self.etcd = EtcdCluster(root / "etcd")
        self.servers = [ServerProcess(root / f"host{i}", "--cluster", self.etcd.endpoints, *extra, unix=False)
                        for i in range(size)]

    def start(self) -> Pool:
        self.etcd.start()
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            if server.alive():
                server.stop(signal.SIGKILL)
        self.etcd.stop()


def until(check, timeout: float = 10.0, step: float = 0.02):
    """``check()``'s first true value, asked until ``timeout`` s have passed (then its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
