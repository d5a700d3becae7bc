"""P5: many ``event.from`` long-poll watchers, one mutation at a time, delivery latency.

Every watcher holds its own keep-alive connection and session and waits in
``event.from(["VM"], token, timeout)``.  Once all of them are parked, a writer
client changes one VM (``VM.set_name_description``); the delivery latency of a watcher
is the time from just before that call is sent to the arrival of the first byte
of the watcher's reply (taken in the protocol's ``data_received``, so that the
replies queued behind it in this one client process do not count).  It includes
the mutation's journal write and fsync: an event is only published once its
change is durable.  The watchers then re-arm with the
token they got and, after a pause, the next mutation follows.

All watchers and the writer run on one asyncio loop in the bench process, with
the same bare HTTP client as the load generator, so that the figures are not
the cost of an HTTP library.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.httpclient import Connection, Endpoint, HttpError, is_success, render_body

_TOKEN = re.compile(rb"<name>token</name>\s*<value>\s*(?:<string>)?([^<]*)<")
#: How long event.from may wait server-side: longer than any round.
POLL_SECONDS = 120.0
#: How long a round waits for every watcher's reply before counting the rest as lost.
ROUND_LIMIT = 60.0
#: Pause after the watchers re-arm, so that their requests are parked before the next change.
SETTLE_SECONDS = 0.5


@dataclass
class WatchOutcome:
    """Delivery latencies (ms) pooled over every round and watcher."""

    watchers: int
    rounds: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    #: server and watcher-process CPU (µs) per delivery, from just before each mutation until
    #: its last reply arrived: which side the fan-out's time went to
    server_us: list[float] = field(default_factory=list)
    client_us: list[float] = field(default_factory=list)
    lost: int = 0
    error: str | None = None

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class _Watcher:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conn = Connection(endpoint)
        self.session = ""
        self.pending: asyncio.Task[tuple[int, bytes]] | None = None

    async def login(self) -> None:
        self.session = await self.conn.rpc("session.login_with_password", "root", "")

    def arm(self, token: str) -> None:
        body = render_body("event.from", (self.session, ["VM"], token, POLL_SECONDS))
        self.pending = asyncio.ensure_future(self._wait(self.endpoint.request(body)))

    async def _wait(self, request: bytes) -> tuple[float, bytes]:
        status, body = await self.conn.call(request)
        arrived = self.conn.first_byte_at  # not when this task resumes: a thousand replies queue here
        if status != 200 or not is_success(body):
            raise HttpError(f"event.from failed: HTTP {status}")
        return arrived, body


async def _gather_some(tasks: list[asyncio.Task], limit: float) -> None:
    if tasks:
        await asyncio.wait(tasks, timeout=limit)


async def watch(endpoint: Endpoint, watchers: int, rounds: int,
                server_cpu: Callable[[], float] | None = None) -> WatchOutcome:
    """Park ``watchers`` long polls, then run ``rounds`` measured mutations (after one unmeasured).

    ``server_cpu``: the server's CPU seconds so far, sampled around each fan-out."""
    outcome = WatchOutcome(watchers)
    writer = Connection(endpoint)
    crowd = [_Watcher(endpoint) for _ in range(watchers)]
    try:
        session = await writer.rpc("session.login_with_password", "root", "")
        first = await writer.rpc("event.from", session, ["VM"], "", 0.0)
        token = first["token"]
        found = await writer.rpc("VM.get_all_records_where", session, 'field "is_control_domain"="false"')
        if not found:
            raise HttpError("no VM to change")
        target = next(iter(found))
        for start in range(0, watchers, 100):  # logins in batches: a thousand at once is a SYN flood
            await asyncio.gather(*(w.login() for w in crowd[start:start + 100]))
        for w in crowd:
            w.arm(token)
        for round_no in range(rounds + 1):
            await asyncio.sleep(SETTLE_SECONDS)
            cpu0 = (server_cpu() if server_cpu else math.nan, time.process_time())
            t0 = time.perf_counter()
            await writer.rpc("VM.set_name_description", session, target, f"watched {time.time_ns()} {round_no}")
            acked = time.perf_counter()
            tasks = [w.pending for w in crowd if w.pending is not None]
            await _gather_some(tasks, ROUND_LIMIT)
            cpu1 = (server_cpu() if server_cpu else math.nan, time.process_time())
            measured = round_no > 0
            if measured:
                outcome.rounds += 1
                outcome.write_ms.append((acked - t0) * 1000)
                outcome.server_us.append((cpu1[0] - cpu0[0]) / watchers * 1e6)
                outcome.client_us.append((cpu1[1] - cpu0[1]) / watchers * 1e6)
            for w in crowd:
                task, w.pending = w.pending, None
                if task is None or not task.done() or task.exception() is not None:
                    if task is not None:
                        task.cancel()
                    outcome.lost += measured
                    w.conn.close()
                    w.conn = Connection(endpoint)
                    w.arm(token)
                    continue
                arrived, body = task.result()
                if measured:
                    outcome.latencies_ms.append((arrived - t0) * 1000)
                found = _TOKEN.search(body)
                if found:
                    token = found.group(1).decode()  # a watcher that lost its reply re-arms from here
                w.arm(token)
    except (HttpError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        for w in crowd:
            if w.pending is not None:
                w.pending.cancel()
            w.conn.close()
        writer.close()
    return outcome


def run(endpoint: Endpoint, watchers: int, rounds: int,
        server_cpu: Callable[[], float] | None = None) -> WatchOutcome:
    """Run :func:`watch` on a fresh event loop (uvloop's where installed: cheaper per reply)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(watch(endpoint, watchers, rounds, server_cpu))
    return uvloop.run(watch(endpoint, watchers, rounds, server_cpu))
