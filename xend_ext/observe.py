"""What an operator sees of a running server: Prometheus metrics, the audit log and ``GET /``.

Every Xen-API call passes :meth:`Observer.call` (the server wraps the dispatcher's ``call`` in it,
once, at start): it counts the call, its failure and its latency, and writes one audit line for
each call that may change state (a message whose role is above read-only) and each failed login.
The hot path costs a clock read, two dictionary updates and a bisect; an audit line is one
``write`` to its own file (:class:`AuditFile`). Everything else (sessions, watchers, journal
fsyncs) is read when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from pathlib import Path
from time import perf_counter
from typing import Any

from . import __version__
from .datamodel import READ_ONLY

audit_log = logging.getLogger("xend_ext.audit")  # where audit lines go when there is no audit file
log = logging.getLogger("xend_ext")

#: latency buckets (seconds) of xend_ext_call_duration_seconds
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the login calls whose failures are audited, and where their user name is among the params (never a secret)
LOGINS = {"session.login_with_password": 0, "session.slave_local_login_with_password": 0, "session.pool_login": 1}


class Observer:
    def __init__(self, dispatcher, services, gates: list, audit: AuditFile | None = None) -> None:
        self.services = services
        self.gates = gates
        self.audit = audit.write if audit is not None else audit_log.info
        self.inner = dispatcher.call
        registry = dispatcher.registry
        #: messages whose calls are audited (and their Async. forms): every one a read-only session may not make
        mutating = {name for name, (_cls, msg) in registry.methods.items() if msg.role != READ_ONLY}
        self.mutating = frozenset(mutating | {"Async." + name for name in mutating})
        #: the names counted one by one; any other (a client may send any string) counts as one
        self.known = frozenset(registry.methods) | {"Async." + name for name in registry.methods}
        self.calls: dict[str, int] = {}  # by method
        self.errors: dict[str, int] = {}  # by error code
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        dispatcher.call = self.call

    # -- the hot path ------------------------------------------------------------------------
    def call(self, method: str, params: tuple):
        start = perf_counter()
        result = self.inner(method, params)
        if result.__class__ is not tuple:  # an awaitable: the call finishes later
            return self._later(method, params, result, start)
        self._count(method, params, result[0], start)
        return result

    async def _later(self, method: str, params: tuple, pending, start: float):
        result = await pending
        self._count(method, params, result[0], start)
        return result

    def _count(self, method: str, params: tuple, reply: Any, start: float) -> None:
        elapsed = perf_counter() - start
        self.buckets[bisect_left(BUCKETS, elapsed)] += 1
        self.latency_sum += elapsed
        calls = self.calls
        name = method if method in self.known else "(unknown)"
        calls[name] = calls.get(name, 0) + 1
        failed = reply.__class__ is dict and reply.get("Status") == "Failure"
        if failed:
            code = (reply.get("ErrorDescription") or ["?"])[0]
            self.errors[code] = self.errors.get(code, 0) + 1
        if method in self.mutating:
            self._audit(method, params, reply, failed)
        elif failed and method in LOGINS:
            at = LOGINS[method]
            user = params[at] if len(params) > at and isinstance(params[at], str) else "?"
            self.audit(f"user={_word(user)} call={method} result={_outcome(reply)}")

    def _audit(self, method: str, params: tuple, reply: Any, failed: bool) -> None:
        """who (the session's user), what (the call and the object it names), the result."""
        session = self.services.db.find(params[0]) if params and isinstance(params[0], str) else None
        user = session.values.get("this_user") if session is not None else None
        target = params[1] if len(params) > 1 and isinstance(params[1], str) and params[1].startswith(
            "OpaqueRef:") else ""
        self.audit(f"user={_word(str(user or '?'))} call={method}{' target=' + target if target else ''} "
                   f"result={_outcome(reply) if failed else 'ok'}")

    # -- scraped -----------------------------------------------------------------------------
    def metrics(self) -> str:
        s = self.services
        out = [
            "# HELP xend_ext_info The server's version.", "# TYPE xend_ext_info gauge",
            f'xend_ext_info{{version="{__version__}"}} 1',
            "# HELP xend_ext_calls_total Xen-API calls answered, by method.", "# TYPE xend_ext_calls_total counter",
            *(f'xend_ext_calls_total{{method="{_label(m)}"}} {n}' for m, n in sorted(self.calls.items())),
            "# HELP xend_ext_errors_total Xen-API calls that failed, by error code.",
            "# TYPE xend_ext_errors_total counter",
            *(f'xend_ext_errors_total{{code="{_label(c)}"}} {n}' for c, n in sorted(self.errors.items())),
            "# HELP xend_ext_call_duration_seconds Time from a call's arrival to its reply.",
            "# TYPE xend_ext_call_duration_seconds histogram",
        ]
        total = 0
        for bound, count in zip((*BUCKETS, "+Inf"), self.buckets, strict=True):
            total += count
            out.append(f'xend_ext_call_duration_seconds_bucket{{le="{bound}"}} {total}')
        out += [f"xend_ext_call_duration_seconds_sum {self.latency_sum:.6f}",
                f"xend_ext_call_duration_seconds_count {total}"]
        hub = s.hub
        gauges = [
            ("sessions", "Sessions logged in.", len(s.db.tables["session"])),
            ("event_registrations", "Sessions registered for event.next.", len(hub.registrations)),
            ("event_watchers", "event.from calls waiting for a change.", hub.waiting),
            ("connections", "Open client connections.", sum(len(g.connections) for g in self.gates)),
        ]
        for name, text, value in gauges:
            out += [f"# HELP xend_ext_{name} {text}", f"# TYPE xend_ext_{name} gauge", f"xend_ext_{name} {value}"]
        stats = s.store.stats()
        out += ["# HELP xend_ext_journal_fsyncs_total fsyncs of the journal.",
                "# TYPE xend_ext_journal_fsyncs_total counter", f"xend_ext_journal_fsyncs_total {stats['fsyncs']}",
                "# HELP xend_ext_journal_records_total Records written to the journal.",
                "# TYPE xend_ext_journal_records_total counter",
                f"xend_ext_journal_records_total {stats['journal_records']}"]
        return "\n".join(out) + "\n"


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _word(text: str) -> str:
    """A value as one word of an audit line (a user name may hold anything)."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "?"


def _outcome(reply: Any) -> str:
    description = reply.get("ErrorDescription") or ["?"] if isinstance(reply, dict) else ["?"]
    return _word(str(description[0]))


# -- routes ----------------------------------------------------------------------------------

def handle_metrics(observer: Observer | None):
    if observer is None:
        return 503, "text/plain", b"the server is starting\n"
    return 200, "text/plain; version=0.0.4; charset=utf-8", observer.metrics().encode()


def handle_index(addresses: list[str]):
    """GET /: a page that names the server and says where its API is."""
    listeners = "".join(f"<li><code>{a}</code></li>" for a in addresses)
    page = (f"<!DOCTYPE html>\n<html><head><title>xend-ext {__version__}</title></head><body>\n"
            f"<h1>xend-ext {__version__}</h1>\n<p>A Xen-API server. The API is XML-RPC: "
            "<code>POST /</code> or <code>POST /RPC2</code> with a <code>methodCall</code> body, starting "
            "with <code>session.login_with_password</code>.</p>\n"
            f"<p>Listening on:</p><ul>{listeners}</ul>\n"
            "<p>Prometheus metrics: <a href=\"/metrics\"><code>GET /metrics</code></a>. The command-line "
            "client is <code>xm</code> (<code>xm --help</code>).</p>\n</body></html>\n")
    return 200, "text/html; charset=utf-8", page.encode()


# -- the audit log's own file ----------------------------------------------------------------

def utc_formatter(fmt: str) -> logging.Formatter:
    """Log lines stamped with the UTC time, ISO 8601 (the ``Z`` and milliseconds are in ``fmt``)."""
    formatter = logging.Formatter(fmt, "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


class AuditFile:
    """The audit log's file: one line per call, stamped with the UTC time (ISO 8601, milliseconds).

    A line is written (one ``write``, appending) on the loop when its call ends, so it is in the
    kernel before the call's reply leaves: an acknowledged change has its line even if the server
    is killed right after. The write goes to the page cache (the journal's fsync is what waits for
    the disk) and costs a few µs, where a logging record through a queue to a thread cost some
    50 µs of CPU per line.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.second = -1
        self.stamp = ""  # the time stamp of self.second, to the second

    def write(self, text: str) -> None:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second, self.stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = f"{self.stamp}.{int((now - second) * 1000):03d}Z {text}\n".encode("utf-8", "replace")
        try:
            os.write(self.fd, line)
        except OSError as exc:  # a full disk refuses the journal too: the main log keeps the line
            log.error("audit log: %s; the line was: %s", exc, text)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
