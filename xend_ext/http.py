"""HTTP/1.1 for the XML-RPC endpoint, on asyncio with httptools' parser.

Hostile clients are expected: bodies are capped while they arrive, a request must arrive
within a deadline, idle keep-alive connections are closed, pipelined requests are answered in
order, and any parse error is answered with a 4xx before the connection is closed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools

log = logging.getLogger("xend_ext.http")

REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Payload Too Large", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass
class Limits:
    max_body: int = 16 << 20
    max_header_bytes: int = 64 << 10
    read_timeout: float = 30.0
    idle_timeout: float = 300.0
    max_connections: int = 1024
    max_pipelined: int = 32


@dataclass
class Request:
    method: str
    path: str
    body: bytes
    keep_alive: bool
    headers: dict[str, str]


# A handler turns a request into (status, content type, body), or an awaitable of that when it
# has to wait; answering at once where it can saves a task per request.
Response = tuple[int, str, bytes]
Handler = Callable[[Request], "Response | Awaitable[Response]"]


def http_response(status: int, ctype: str, body: bytes, keep_alive: bool, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, limits: Limits, connections: set) -> None:
        self.handler = handler
        self.limits = limits
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        # One deadline per connection, checked by sweep(): cheaper than a timer per request.
        self.deadline = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_len = 0
        self._field = b""

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.connections) >= self.limits.max_connections:
            self._fail(503, "too many connections; try again later")
            return
        self.connections.add(self)
        self.deadline = self.loop.time() + self.limits.idle_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.connections.discard(self)

    def check_deadline(self, now: float) -> None:
        """Called by sweep(): a request that is too slow gets 408, an idle connection is closed."""
        if self.busy or self.closing or now < self.deadline:
            return
        if self.body_len or self.url or self.headers:
            self._fail(408, "the request did not arrive in time")
        elif self.transport is not None:
            self.closing = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
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

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.deadline = self.loop.time() + self.limits.read_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body:
            raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.body_len > self.limits.max_body:
            raise _Reject(413, f"request body larger than {self.limits.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path.decode("latin-1") if self.url else "/"
        request = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=path,
            body=b"".join(self.body),
            keep_alive=self.parser.should_keep_alive(),
            headers=self.headers,
        )
        self._reset()
        if not self.busy:
            result = self._call(request)
            if not inspect.isawaitable(result):
                self._write(request, result)
                return
            self.busy = True
            self.loop.create_task(self._serve(request, result))
            return
        self.pending.append(request)
        if len(self.pending) >= self.limits.max_pipelined and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, "request headers too large")

    # -- answering -----------------------------------------------------------------------
    def _call(self, request: Request) -> Response | Awaitable[Response]:
        try:
            return self.handler(request)
        except Exception:  # the handler maps errors itself; this is a last guard
            log.exception("request handler failed")
            return 500, "text/plain", b"internal error\n"

    def _write(self, request: Request, response: Response) -> bool:
        """Send one response; False when the connection is finished."""
        if self.closing or self.transport is None:
            return False
        status, ctype, body = response
        self.transport.write(http_response(status, ctype, body, request.keep_alive))
        if not request.keep_alive:
            self.closing = True
            self.transport.close()
            return False
        self.deadline = self.loop.time() + self.limits.idle_timeout
        return True

    async def _serve(self, request: Request, result: Awaitable[Response]) -> None:
        """Finish a call that had to wait, then the requests pipelined behind it, in order."""
        try:
            while True:
                try:
                    response = await result
                except Exception:
                    log.exception("request handler failed")
                    response = 500, "text/plain", b"internal error\n"
                if not self._write(request, response) or not self.pending:
                    return
                request = self.pending.popleft()
                if self.paused and self.transport is not None:
                    self.transport.resume_reading()
                    self.paused = False
                result = self._call(request)
                if not inspect.isawaitable(result):
                    result = _ready(result)
        finally:
            self.busy = False
            self.deadline = self.loop.time() + self.limits.idle_timeout

    def _fail(self, status: int, reason: str) -> None:
        if self.transport is None or self.closing:
            return
        self.closing = True
        body = (reason + "\n").encode("utf-8", "replace")
        self.transport.write(http_response(status, "text/plain; charset=utf-8", body, False))
        self.transport.close()


async def _ready(response: Response) -> Response:
    return response


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def sweep(connections: set[HttpProtocol], limits: Limits) -> None:
    """Enforce every connection's deadline, a few times per read timeout."""
    loop = asyncio.get_running_loop()
    interval = max(0.05, min(1.0, limits.read_timeout / 4))
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        for conn in list(connections):
            conn.check_deadline(now)
