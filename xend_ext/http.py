"""HTTP/1.1 for the XML-RPC endpoint, on asyncio with httptools' parser.

Hostile clients are expected. Bodies are capped while they arrive; a new connection must start
a request within a short deadline and each request must arrive within another; idle keep-alive
connections are closed. Pipelined requests are answered in order, and their replies leave in
one write per batch. Memory per connection is bounded: a connection is not read while it has
``max_pipelined`` requests waiting or while the transport holds more unsent reply bytes than its
high-water mark (``pause_writing``), and what was read but not parsed waits as raw bytes.
Each listener admits connections through its own :class:`Gate` (a limit per listener and per
peer address), so TCP clients can never take the Unix socket's room. Any parse error is
answered with a 4xx before the connection is closed.

The usual request (a POST to ``/`` or ``/RPC2`` as the official clients frame it: HTTP/1.1, a few
known headers, one Content-Length, the whole request in hand) is read by one pattern (``_USUAL``)
instead of the parser's callbacks; anything else, and whatever follows a request the pattern does
not take, goes to httptools, and a test checks that both read the same requests.

A request may stream its body elsewhere instead: ``sinks(method, url, length)`` (raw bytes but the
length, -1 if not given) is asked at the end of the headers of every request but the usual ones
(whose paths are the Xen-API's own) and may return a :class:`BodySink` (or raise
:class:`Refuse`, answered before any body byte is read). A sunk body is not buffered and not
capped by ``max_body`` (the sink bounds it); each chunk renews the read deadline, and the sink
is told if the connection ends first. The handler then gets the request with its ``sink``.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httptools

log = logging.getLogger("xend_ext.http")

REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    403: "Forbidden", 409: "Conflict", 411: "Length Required", 507: "Insufficient Storage",
    413: "Payload Too Large", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

FEED = 16 << 10  # bytes given to the parser at a time, so that a full queue stops it in time
FLUSH_AT = 64 << 10  # replies gathered for one write are sent once they reach this size
SEPARATE_BODY = 64 << 10  # a reply body this large is written beside its head, not copied after it


@dataclass
class Limits:
    max_body: int = 16 << 20
    max_header_bytes: int = 64 << 10
    first_byte_timeout: float = 10.0  # from accept to the first byte of the first request
    read_timeout: float = 30.0  # from the first byte of a request to its last; also for a stalled reader
    idle_timeout: float = 300.0  # between requests on a keep-alive connection
    max_pipelined: int = 32  # requests received and not yet answered, per connection
    write_high: int = 256 << 10  # unsent reply bytes per connection above which it is not read


@dataclass
class Request:
    method: str
    path: str
    body: bytes
    keep_alive: bool
    sink: Any = None  # the BodySink its body went to, if any


class BodySink(Protocol):
    def write(self, data: bytes) -> None: ...  # may raise Refuse
    def abort(self) -> None: ...  # the connection ended, or the request was refused, before the body's end


# The request lines every client sends, decoded once (others are parsed per request).
_PATHS = {b"/": "/", b"/RPC2": "/RPC2"}
_METHODS = {b"POST": "POST", b"GET": "GET"}
# The usual request's head: an XML-RPC POST as xmlrpc.client (so every official client) frames it;
# only headers that change nothing here, printable values, exactly one Content-Length.
_PLAIN_HEADERS = rb"(?:(?:Host|User-Agent|Content-Type|Accept-Encoding|Accept): [ -~]*\r\n)*"
_USUAL = re.compile(rb"POST (/|/RPC2) HTTP/1\.1\r\n" + _PLAIN_HEADERS + rb"Content-Length: ([0-9]{1,9})\r\n"
                    + _PLAIN_HEADERS + rb"\r\n")


# A handler turns a request into (status, content type, body), or an awaitable of that when it
# has to wait; answering at once where it can saves a task per request.
Response = tuple[int, str, bytes]
Handler = Callable[[Request], "Response | Awaitable[Response]"]


def http_head(status: int, ctype: str, length: int, keep_alive: bool) -> bytes:
    if status == 200 and ctype == "text/xml" and keep_alive:  # nearly every reply: only its length varies
        return b"%s%d%s" % (_OK_XML, length, _KEEP_ALIVE)
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")


_OK_XML = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: "
_KEEP_ALIVE = b"\r\nConnection: keep-alive\r\n\r\n"


def http_response(status: int, ctype: str, body: bytes, keep_alive: bool) -> bytes:
    last = _Last.framed
    if body is last[0] and ctype is last[1] and status == 200 and keep_alive:
        return last[2]  # the same reply to many (event.from)
    response = http_head(status, ctype, len(body), keep_alive) + body
    if status == 200 and keep_alive and len(body) < SEPARATE_BODY:
        _Last.framed = (body, ctype, response)
    return response


class _Last:
    """The last 200 reply framed, kept for a caller with the very same body: the watchers one
    change wakes share one body (xend_ext.events, wire.dumps_response). (body, content type,
    response), replaced whole."""

    framed: tuple[bytes | None, str, bytes] = (None, "", b"")


@dataclass
class Gate:
    """Admission to one listener: at most ``limit`` connections, at most ``per_peer`` from one
    address (an IPv6 peer counts by its /64; 0: no per-peer limit). When full, the connection
    idle for longest makes room (idle connections never lock anyone out); when none is idle,
    the newcomer gets 503."""

    name: str
    limit: int
    per_peer: int = 0
    connections: set[HttpProtocol] = field(default_factory=set)
    peers: dict[str, set[HttpProtocol]] = field(default_factory=dict)

    def admit(self, conn: HttpProtocol) -> bool:
        mine = self.peers.get(conn.peer, set()) if self.per_peer else set()
        if self.per_peer and len(mine) >= self.per_peer and not _evict(mine):
            return False
        if len(self.connections) >= self.limit and not _evict(self.connections):
            return False
        self.connections.add(conn)
        if self.per_peer:
            self.peers.setdefault(conn.peer, set()).add(conn)
        return True

    def release(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)
        mine = self.peers.get(conn.peer)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self.peers[conn.peer]


def _evict(conns: set[HttpProtocol]) -> bool:
    """Close the connection of ``conns`` idle for longest, if one is idle."""
    idle = [c for c in conns if c.idle()]
    if not idle:
        return False
    oldest = min(idle, key=lambda c: c.idle_since)
    oldest.close()
    return True


def peer_key(peername) -> str:
    """Whom a connection counts against: its IP address, the /64 for IPv6, '' for Unix sockets."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    host = peername[0]
    if ":" not in host:
        return host
    address = ipaddress.ip_address(host.split("%")[0])
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, limits: Limits, gate: Gate, sinks: Callable | None = None) -> None:
        self.handler = handler
        self.sinks = sinks
        self.limits = limits
        self.gate = gate
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.queue: deque[Request] = deque()  # received, not yet started
        self.out: list[bytes] = []  # replies not yet handed to the transport
        self.out_bytes = 0
        self.backlog = b""  # read but not parsed: the queue was full or writing was paused
        self.busy = False  # a request is being answered by a task
        self.in_message = False  # the parser has begun a request and not ended it
        self.usual = True  # read usual requests by _USUAL (False: by the parser only, for the tests)
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        # One deadline per connection, checked by sweep(): cheaper than a timer per request.
        self.deadline = 0.0
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self.length = -1  # no Content-Length (yet)
        self.sink: BodySink | None = None

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_key(transport.get_extra_info("peername"))
        if not self.gate.admit(self):
            self.gate = None  # type: ignore[assignment]  # never counted, so nothing to release
            self._fail(503, "too many connections; try again later")
            return
        self.transport.set_write_buffer_limits(high=self.limits.write_high)
        self.idle_since = self.loop.time()
        self.deadline = self.idle_since + self.limits.first_byte_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
        self.queue.clear()
        self.out.clear()
        self.backlog = b""
        if self.gate is not None:
            self.gate.release(self)

    def close(self, abort: bool = False) -> None:
        """Close (after what is written; at once when ``abort``), and give its room back now."""
        if self.transport is not None and not self.closing:
            self.closing = True
            if self.gate is not None:
                self.gate.release(self)
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def idle(self) -> bool:
        """Nothing received, queued, being answered or unsent: closing it loses nothing."""
        return not (self.busy or self.queue or self.backlog or self.write_paused or self.closing
                    or self.partial())

    def partial(self) -> bool:
        return bool(self.url or self.header_bytes or self.body_len)

    def check_deadline(self, now: float) -> None:
        """Called by sweep(): a request that is too slow gets 408, a client that does not take its
        replies or an idle connection is closed."""
        if self.closing or now < self.deadline:
            return
        if self.write_paused:
            self.close(abort=True)  # it stopped reading its replies: they are dropped
        elif self.busy or self.queue:
            return
        elif self.partial():
            self._fail(408, "the request did not arrive in time")
        else:
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.deadline = self.loop.time() + self.limits.read_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self._pump()
        if self.idle():
            self.deadline = self.loop.time() + self.limits.idle_timeout

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.backlog:  # a transport may deliver once more after pause_reading
            self.backlog += data
            return
        self._feed(data)

    def _stalled(self) -> bool:
        return self.write_paused or len(self.queue) >= self.limits.max_pipelined

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time; keep what is left when the connection stalls."""
        if len(data) <= FEED and not self._stalled():  # one small request, the usual case
            if not self.in_message and self.usual:
                data = self._take_usual(data)
            if data:
                self._parse(data)
            self._flush()
            return
        for start in range(0, len(data), FEED):
            if self.closing:
                return
            if self._stalled():
                self.backlog = data[start:]
                if not self.read_paused:
                    self.read_paused = True
                    self.transport.pause_reading()
                break
            self._parse(data[start:start + FEED])
        self._flush()

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _Reject):
                self._fail(cause.status, cause.reason)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")
        except _Reject as exc:
            self._fail(exc.status, exc.reason)

    def _pump(self) -> None:
        """Answer what is queued, then parse what waited and read again, as far as room allows."""
        self._advance()
        self._flush()
        if self.backlog and not self._stalled() and not self.closing:
            data, self.backlog = self.backlog, b""
            self._feed(data)
        if self.read_paused and not self.backlog and not self._stalled() and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    def _take_usual(self, data: bytes) -> bytes:
        """Answer the whole usual requests at the start of ``data``; what is left is the parser's."""
        start, size, limits = 0, len(data), self.limits
        while (head := _USUAL.match(data, start)) is not None:
            body_at = head.end()
            end = body_at + int(head.group(2))
            if end > size or end - body_at > limits.max_body or body_at - start > limits.max_header_bytes:
                break  # not all here, or too large: the parser takes it and says so
            request = Request("POST", _PATHS[head.group(1)], data[body_at:end], True)
            start = end
            if self.queue or self.busy or self.write_paused or self.closing:
                self.queue.append(request)
                self._advance()
            else:
                self._answer(request)
            if start == size:
                return b""
        return data[start:] if start else data

    # -- httptools callbacks (the parser calls only those defined, so there are no others) ------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.deadline = self.loop.time() + self.limits.read_timeout  # _reset ran when the last one ended

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, "request headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        self.header_bytes += n + len(value)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, "request headers too large")
        if n == 14 and name.lower() == b"content-length" and value.strip().isdigit():
            self.length = int(value)

    def on_headers_complete(self) -> None:
        if self.sinks is not None:
            self.sink = self.sinks(self.parser.get_method(), self.url, self.length)
            if self.sink is not None:
                return
        if self.length > self.limits.max_body:  # refused before its body arrives
            raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.sink is not None:
            self.sink.write(body)
            self.deadline = self.loop.time() + self.limits.read_timeout  # a stream must keep coming
            return
        if self.body_len > self.limits.max_body:
            raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        url = self.url
        path = _PATHS.get(url) or (httptools.parse_url(url).path.decode("latin-1") if url else "/")
        method = self.parser.get_method()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.queue.append(Request(_METHODS.get(method) or method.decode("latin-1"), path, body,
                                  self.parser.should_keep_alive(), self.sink))
        self.sink = None  # the handler has it now
        self.in_message = False
        self._reset()
        self._advance()

    # -- answering -----------------------------------------------------------------------
    def _advance(self) -> None:
        """Answer queued requests in order until one has to wait or the client stops reading."""
        while self.queue and not (self.busy or self.write_paused or self.closing):
            self._answer(self.queue.popleft())

    def _answer(self, request: Request) -> None:
        """Answer one request now, or start the task that will (then the connection is busy)."""
        try:
            result = self.handler(request)
        except Exception:  # the handler maps errors itself; this is a last guard
            log.exception("request handler failed")
            result = 500, "text/plain", b"internal error\n"
        if type(result) is not tuple and inspect.isawaitable(result):
            self.busy = True
            self.loop.create_task(self._serve(request, result))
            return
        self._reply(request, result)

    def _reply(self, request: Request, response: Response) -> None:
        """Queue one reply for the next write; a reply that ends the connection is sent at once."""
        if self.closing:
            return
        status, ctype, body = response
        if len(body) < SEPARATE_BODY:
            self.out.append(http_response(status, ctype, body, request.keep_alive))
        else:  # a large body is not copied behind its head: the two leave in one vectored write
            self.out += (http_head(status, ctype, len(body), request.keep_alive), body)
        self.out_bytes += len(body)
        if not request.keep_alive:
            self._flush()
            self.close()
            return
        if self.out_bytes >= FLUSH_AT:
            self._flush()  # the transport may pause writing now, which stops _advance
        if not (self.queue or self.busy or self.url or self.header_bytes or self.body_len):  # not partial()
            self.idle_since = self.loop.time()
            self.deadline = self.idle_since + self.limits.idle_timeout

    def _flush(self) -> None:
        if not self.out or self.transport is None:
            return
        out, self.out, self.out_bytes = self.out, [], 0
        if self.closing and self.transport.is_closing():
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    async def _serve(self, request: Request, result: Awaitable[Response]) -> None:
        """Finish a call that had to wait, then go on with the requests queued behind it."""
        try:
            response = await result
        except Exception:
            log.exception("request handler failed")
            response = 500, "text/plain", b"internal error\n"
        self.busy = False
        self._reply(request, response)
        self._pump()

    def _fail(self, status: int, reason: str) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
        if self.transport is None or self.closing:
            return
        self._flush()  # the replies before the bad request go first
        body = (reason + "\n").encode("utf-8", "replace")
        self.transport.write(http_response(status, "text/plain; charset=utf-8", body, False))
        self.close()


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Refuse(_Reject):
    """Raised by a sink factory or a sink: the request is answered ``status`` and the connection closed."""


async def sweep(gates: list[Gate], limits: Limits) -> None:
    """Enforce every connection's deadline, a few times per the shortest of them."""
    loop = asyncio.get_running_loop()
    interval = max(0.05, min(1.0, limits.read_timeout / 4, limits.first_byte_timeout / 4))
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        for gate in gates:
            for conn in list(gate.connections):
                conn.check_deadline(now)
