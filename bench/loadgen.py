"""The load generator: N concurrent Xen-API clients on one asyncio loop.

One cell of the benchmark is one phase at one client count against one
server.  The generator logs every client in, warms up, then hands control to
a *checkpoint* callback twice -- just before and just after the measured
window -- so that the caller can sample the server's CPU time exactly around
the calls that are counted.

By default the generator runs in its own process (``spawn``), so that its
CPU use, which is reported too, is cleanly separated from the bench's
bookkeeping and so that a wedged cell cannot hang the whole run.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe

from bench.httpclient import (
    BodyTemplate,
    Connection,
    Endpoint,
    HttpError,
    describe_failure,
    is_success,
    render_body,
)

SMALL_CALL = "small-call"
DURABLE_WRITE = "durable-write"
#: The phases of the client-count sweep (``python -m bench``).
PHASES = (SMALL_CALL, DURABLE_WRITE)
#: Phases on stored VMs, run by ``python -m bench --scale`` (bench/scale.py).
VM_WRITE = "vm-write"
GET_ALL_RECORDS = "get-all-records"
GET_ALL_RECORDS_WHERE = "get-all-records-where"
#: The filter of the ``get-all-records-where`` phase: one VM of the generated ones.
WHERE_EXPR = 'field "name_label"="vm-42"'

#: How long calls still in flight at the end of a window may take before the
#: cell gives up on them (the reference needs seconds per write at 16 clients).
GRACE_SECONDS = 60.0
#: Distinct failure messages kept per cell for the report.
MAX_FAILURE_SAMPLES = 5

Checkpoint = Callable[[str], None]


@dataclass(frozen=True)
class CellSpec:
    """What to run: ``tag`` keeps write keys unique across cells and runs."""

    phase: str
    clients: int
    seconds: float
    warmup: float
    endpoint: Endpoint
    tag: str


@dataclass
class CellOutcome:
    """What the generator saw; server CPU is added by the caller."""

    calls: int = 0
    failures: int = 0
    elapsed: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    gen_cpu_s: float = 0.0
    connects: int = 0
    failure_samples: list[str] = field(default_factory=list)
    error: str | None = None


class _Client:
    """One simulated Xen-API client with its own session and connection."""

    def __init__(self, spec: CellSpec, index: int, shared: dict[str, asyncio.Future[list[str]]]) -> None:
        self.spec = spec
        self.shared = shared
        self.index = index
        self.conn = Connection(spec.endpoint)
        self.latencies: list[float] = []
        self.failures = 0
        self.samples: dict[str, int] = {}
        self._seq = 0
        self._fixed: bytes = b""
        self._template: BodyTemplate | None = None
        self._vms: list[str] = []
        self._rename: BodyTemplate | None = None

    async def _own_host(self, session: str) -> str:
        """The host the server runs on: in a pool of hosts another host's would be forwarded there
        (the reference server knows no session.get_this_host: its one host)."""
        try:
            return await self.conn.rpc("session.get_this_host", session, session)
        except HttpError:
            hosts = await self.conn.rpc("host.get_all", session)
            if not hosts:
                raise HttpError("host.get_all returned no hosts") from None
            return hosts[0]

    async def setup(self) -> None:
        """Log in and find the host (or the VMs) once, as a real client would."""
        session = await self.conn.rpc("session.login_with_password", "root", "")
        phase, marker = self.spec.phase, BodyTemplate.MARKER
        if phase in (SMALL_CALL, DURABLE_WRITE):
            host = await self._own_host(session)
            if phase == SMALL_CALL:
                self._fixed = self.spec.endpoint.request(render_body("host.get_record", (session, host)))
            else:
                self._template = BodyTemplate("host.add_to_other_config", (session, host, marker, "1"))
        elif phase == VM_WRITE:
            self._vms = await self._shared_vms(session)
            if not self._vms:
                raise HttpError("VM.get_all returned no VMs")
            self._rename = BodyTemplate("VM.set_name_label", (session, marker, marker))
            self._template = BodyTemplate("VM.add_to_other_config", (session, marker, marker, "1"))
        elif phase == GET_ALL_RECORDS:
            self._fixed = self.spec.endpoint.request(render_body("VM.get_all_records", (session,)))
        elif phase == GET_ALL_RECORDS_WHERE:
            self._fixed = self.spec.endpoint.request(render_body("VM.get_all_records_where", (session, WHERE_EXPR)))
        else:
            raise ValueError(f"unknown phase {phase!r}")

    async def _shared_vms(self, session: str) -> list[str]:
        """VM.get_all, asked by the first client only: at 100k VMs the reply is megabytes."""
        pending = self.shared.get("VM")
        if pending is None:
            pending = self.shared["VM"] = asyncio.ensure_future(self.conn.rpc("VM.get_all", session))
        return await pending

    def _next_request(self) -> bytes:
        if self._template is None:
            return self._fixed
        self._seq += 1
        key = f"{self.spec.tag}-{self.index}-{self._seq}"
        if not self._vms:
            return self.spec.endpoint.request(self._template.render(key))
        # VM writes: a name change and a new other_config key in turn, each client on VMs of its own
        vm = self._vms[(self.index + self.spec.clients * self._seq) % len(self._vms)]
        template = self._rename if self._seq % 2 and self._rename is not None else self._template
        return self.spec.endpoint.request(template.render(vm, key))

    def record_failure(self, message: str) -> None:
        """Count a failed call, keeping a few distinct messages to print."""
        self.failures += 1
        if message in self.samples or len(self.samples) < MAX_FAILURE_SAMPLES:
            self.samples[message] = self.samples.get(message, 0) + 1

    def reset(self) -> None:
        """Forget warm-up figures; keep the session and connection."""
        self.latencies = []
        self.failures = 0
        self.samples = {}
        self.conn.connects = 0

    async def run(self, deadline: float) -> None:
        """Issue calls back to back until the deadline; count what completes."""
        perf = time.perf_counter
        latencies = self.latencies
        call = self.conn.call
        now = perf()
        while now < deadline:
            request = self._next_request()
            start = perf()
            try:
                status, body = await call(request)
            except (HttpError, OSError) as exc:
                self.record_failure(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)  # don't spin on a dead server
                now = perf()
                continue
            now = perf()
            if status == 200 and is_success(body):
                latencies.append(now - start)
            else:
                self.record_failure(describe_failure(status, body))


async def _run_all(clients: list[_Client], seconds: float) -> float:
    """Run every client for ``seconds``; returns the elapsed wall time."""
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(c.run(start + seconds)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_SECONDS)
    for task in pending:
        task.cancel()
    for client, task in zip(clients, tasks, strict=True):
        if task in pending:
            client.record_failure(f"no response within {GRACE_SECONDS:.0f} s after the window")
        elif task.exception() is not None:
            client.record_failure(f"client crashed: {task.exception()!r}")
    if pending:
        await asyncio.wait(pending)
    return time.perf_counter() - start


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile in milliseconds; NaN when nothing completed."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] * 1000.0


async def run_cell(spec: CellSpec, checkpoint: Checkpoint) -> CellOutcome:
    """Set up, warm up, then measure one cell between two checkpoints."""
    shared: dict[str, asyncio.Future[list[str]]] = {}
    clients = [_Client(spec, i, shared) for i in range(spec.clients)]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.setup() for c in clients)), timeout=GRACE_SECONDS)
        except (TimeoutError, HttpError, OSError) as exc:
            return CellOutcome(error=f"setup failed: {type(exc).__name__}: {exc}")
        if spec.warmup > 0:
            await _run_all(clients, spec.warmup)
        for client in clients:
            client.reset()
        checkpoint("start")
        cpu0 = time.process_time()
        elapsed = await _run_all(clients, spec.seconds)
        cpu1 = time.process_time()
        checkpoint("end")
    finally:
        for client in clients:
            client.conn.close()

    latencies = sorted(x for c in clients for x in c.latencies)
    samples: dict[str, int] = {}
    for client in clients:
        for message, count in client.samples.items():
            samples[message] = samples.get(message, 0) + count
    return CellOutcome(
        calls=len(latencies),
        failures=sum(c.failures for c in clients),
        elapsed=elapsed,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        gen_cpu_s=cpu1 - cpu0,
        connects=sum(c.conn.connects for c in clients),
        failure_samples=[f"{n}x {m}" for m, n in list(samples.items())[:MAX_FAILURE_SAMPLES]],
    )


def _child_main(spec: CellSpec, pipe: Pipe) -> None:
    """Generator process: checkpoints become a request/acknowledge on the pipe."""

    def checkpoint(name: str) -> None:
        pipe.send(name)
        pipe.recv()

    try:
        outcome = asyncio.run(run_cell(spec, checkpoint))
    except Exception as exc:  # reported to the parent rather than lost
        outcome = CellOutcome(error=f"generator crashed: {exc!r}")
    pipe.send(outcome)
    pipe.close()


def measure(spec: CellSpec, checkpoint: Checkpoint, separate_process: bool = True) -> CellOutcome:
    """Run one cell, calling ``checkpoint`` around its measured window."""
    if not separate_process:
        return asyncio.run(run_cell(spec, checkpoint))
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(spec, theirs), daemon=True)
    proc.start()
    theirs.close()
    limit = 2 * GRACE_SECONDS + spec.warmup + spec.seconds + 30.0
    try:
        while True:
            if not ours.poll(limit):
                return CellOutcome(error="generator process stopped answering")
            message = ours.recv()
            if isinstance(message, CellOutcome):
                return message
            checkpoint(message)
            ours.send("ack")
    except EOFError:
        return CellOutcome(error=f"generator process died (exit code {proc.exitcode})")
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
