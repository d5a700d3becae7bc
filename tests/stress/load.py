"""Load for the stress tests: many keep-alive clients on the real server, measured per window.

Clients are ``bench.httpclient`` connections (pre-rendered requests on a bare asyncio protocol)
so that the load costs the shared CPU little. Each client logs in, makes its own VM, then loops
over a mix of reads and durable writes and, now and then, logs out and in again and makes and
destroys a VM: the churn a long-lived server sees. Every window records the calls answered,
the failures, the p99 latency and the server's resident memory.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from bench.httpclient import BodyTemplate, Connection, Endpoint, describe_failure, is_success, render_body

MIB = 1 << 20


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (utime + stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    start: float
    calls: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    rss_kib: int = 0
    cpu: float = 0.0  # server CPU seconds spent in the window

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


@dataclass
class Soak:
    windows: list[Window]
    problems: list[str]

    def summary(self) -> str:
        return "\n".join(f"{w.start:6.0f}s calls={w.calls:6d} failures={w.failures} p99={w.p99_ms:6.1f}ms "
                         f"rss={w.rss_kib / 1024:6.1f}MiB cpu/call={1e6 * w.cpu / max(1, w.calls):5.0f}us"
                         for w in self.windows)


def vm_record(name: str) -> dict:
    return {"name_label": name, "memory_target": str(128 * MIB), "memory_static_max": str(256 * MIB),
            "VCPUs_at_startup": "1", "VCPUs_max": "2", "VCPUs_params": {}}


class _Client:
    def __init__(self, endpoint: Endpoint, index: int, soak: Soak) -> None:
        self.endpoint = endpoint
        self.index = index
        self.soak = soak
        self.conn = Connection(endpoint)
        self.session = ""

    async def _call(self, body: bytes) -> bool:
        started = time.monotonic()
        status, reply = await self.conn.call(self.endpoint.request(body))
        window = self.soak.windows[-1]
        window.latencies.append(time.monotonic() - started)
        if status == 200 and is_success(reply):
            window.calls += 1
            return True
        window.failures += 1
        if len(self.soak.problems) < 20:
            self.soak.problems.append(describe_failure(status, reply))
        return False

    async def _login(self) -> None:
        self.session = await self.conn.rpc("session.login_with_password", "root", "", "1.0", "stress")

    async def run(self, deadline: float) -> None:
        await self._login()
        host = (await self.conn.rpc("host.get_all", self.session))[0]
        vm = await self.conn.rpc("VM.create", self.session, vm_record(f"soak-{self.index}"))
        rename = BodyTemplate("VM.set_name_label", (self.session, vm, BodyTemplate.MARKER))
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s = self.session
            await self._call(render_body("host.get_record", (s, host)))
            await self._call(render_body("VM.get_record", (s, vm)))
            await self._call(rename.render(f"soak-{self.index}-{n}"))
            await self._call(render_body("VM.add_to_other_config", (s, vm, "k", str(n))))
            await self._call(render_body("VM.remove_from_other_config", (s, vm, "k")))
            if n % 25 == 0:  # session churn: log out, log in again
                await self._call(render_body("session.logout", (s,)))
                await self._login()
                rename = BodyTemplate("VM.set_name_label", (self.session, vm, BodyTemplate.MARKER))
            if n % 10 == 0:  # object churn: a VM made and destroyed
                temp = await self.conn.rpc("VM.create", self.session, vm_record(f"tmp-{self.index}-{n}"))
                await self._call(render_body("VM.destroy", (self.session, temp)))
        await self._call(render_body("VM.destroy", (self.session, vm)))
        self.conn.close()


async def soak(host: str, port: int, pid: int, clients: int, seconds: float, window: float) -> Soak:
    """Run ``clients`` clients for ``seconds``; one Window per ``window`` seconds."""
    result = Soak(windows=[], problems=[])
    begin = time.monotonic()
    result.windows.append(Window(0.0, rss_kib=rss_kib(pid)))
    endpoint = Endpoint(host, port, keep_alive=True)
    tasks = [asyncio.ensure_future(_Client(endpoint, i, result).run(begin + seconds)) for i in range(clients)]
    cpu = cpu_seconds(pid)
    while not all(t.done() for t in tasks):
        await asyncio.wait(tasks, timeout=window)
        result.windows[-1].rss_kib = rss_kib(pid)
        now = cpu_seconds(pid)
        result.windows[-1].cpu += now - cpu  # the tail after the deadline adds to the last window
        cpu = now
        if time.monotonic() < begin + seconds:
            result.windows.append(Window(time.monotonic() - begin))
    for t in tasks:
        t.result()  # a client that broke raises here
    return result
