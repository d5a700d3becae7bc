"""Minimal asyncio XML-RPC-over-HTTP client for the load generator.

The generator shares a 2-core machine with the server it measures, so every
microsecond it spends per call is a microsecond stolen from the server.  We
therefore skip ``xmlrpc.client`` and HTTP libraries on the hot path: requests
are pre-rendered bytes, and responses are framed by a bare ``asyncio.Protocol``
(cheaper per call than the StreamReader/StreamWriter pair that
``asyncio.open_connection`` builds on top of the same protocol machinery).
The body is only scanned for the Xen-API ``Status``; it is parsed with
``xmlrpc.client`` only for the few setup calls and for failure reports.
"""

from __future__ import annotations

import asyncio
import re
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

_SUCCESS = re.compile(rb"<name>\s*Status\s*</name>\s*<value>\s*(?:<string>)?\s*Success\s*<")


def is_success(body: bytes) -> bool:
    """True when the Xen-API struct in the body says ``Status: Success``."""
    return _SUCCESS.search(body) is not None


def describe_failure(status: int, body: bytes) -> str:
    """Turn a failed response into one readable line for the report."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        (result,), _ = xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        return f"XML-RPC fault {fault.faultCode}: {fault.faultString}"
    except Exception as exc:  # whatever broke the parse is the report
        return f"unparsable response ({exc}): {body[:200]!r}"
    if isinstance(result, dict) and "ErrorDescription" in result:
        return f"Failure {result['ErrorDescription']}"
    return f"unexpected result {result!r:.200}"


def render_body(method: str, params: tuple[Any, ...]) -> bytes:
    """The XML-RPC request body, exactly as xmlrpc.client would send it."""
    return xmlrpc.client.dumps(params, method, allow_none=True).encode("utf-8")


class BodyTemplate:
    """A request body with string parameters substituted per call.

    Re-running ``xmlrpc.client.dumps`` for every durable write would cost the
    generator tens of microseconds; splitting a rendered body around markers
    and splicing in the escaped values costs well under one.  Each
    occurrence of ``MARKER`` in ``params`` takes one value of :meth:`render`,
    in order.
    """

    MARKER = "@@BENCH-MARKER@@"

    def __init__(self, method: str, params: tuple[Any, ...]) -> None:
        body = xmlrpc.client.dumps(params, method, allow_none=True)
        parts = body.split(self.MARKER)
        if len(parts) < 2:
            raise ValueError("params must contain BodyTemplate.MARKER")
        self._parts = [part.encode("utf-8") for part in parts]

    def render(self, *values: str) -> bytes:
        """The body with the markers replaced by the XML-escaped values."""
        parts = self._parts
        if len(values) != len(parts) - 1:
            raise ValueError(f"{len(parts) - 1} value(s) expected, got {len(values)}")
        out = [parts[0]]
        for value, part in zip(values, parts[1:], strict=True):
            out += (escape(value).encode("utf-8"), part)
        return b"".join(out)


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests and which HTTP flavour to use.

    ``keep_alive`` selects HTTP/1.1 on one reused connection (xend-ext);
    otherwise HTTP/1.0 with a new connection per call, which is all the
    reference server (like xend) can do.
    """

    host: str
    port: int
    keep_alive: bool
    path: str = "/RPC2"

    def request(self, body: bytes) -> bytes:
        """Frame a body as a complete POST request."""
        version = "HTTP/1.1" if self.keep_alive else "HTTP/1.0"
        head = (
            f"POST {self.path} {version}\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "User-Agent: xend-ext-bench\r\n"
            "Content-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body


class HttpError(Exception):
    """The connection broke or the response could not be framed."""


class _ResponseProtocol(asyncio.Protocol):
    """Frames HTTP responses: headers, then Content-Length bytes or EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._status = 0
        self._length = -2  # -2: headers pending; -1: body runs to EOF
        self._close_after = False
        self._eof = False
        #: perf_counter() when the first byte of the awaited response arrived
        self.first_byte_at = 0.0

    # asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if not self._buf and self._length == -2:
            self.first_byte_at = time.perf_counter()
        self._buf += data
        if self._waiter is not None:
            self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        if self._waiter is not None:
            self._advance()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if self._waiter is not None and not self._waiter.done():
            self._advance()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc or 'closed'}"))

    @property
    def reusable(self) -> bool:
        """False once the server has closed or the transport is going away."""
        return self.transport is not None and not self.transport.is_closing() and not self._eof

    # framing -------------------------------------------------------------

    def expect(self) -> asyncio.Future[tuple[int, bytes, bool]]:
        """A future for the next response: (status, body, server_closes)."""
        self._waiter = asyncio.get_running_loop().create_future()
        self._length = -2
        if self._buf or self._eof:
            self._advance()
        return self._waiter

    def _advance(self) -> None:
        waiter = self._waiter
        assert waiter is not None
        if waiter.done():
            return
        buf = self._buf
        if self._length == -2:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if self._eof:
                    waiter.set_exception(HttpError("EOF before response headers"))
                return
            try:
                self._parse_head(bytes(buf[:end]).decode("latin-1"))
            except (ValueError, IndexError) as exc:
                waiter.set_exception(HttpError(f"bad response head: {exc}"))
                return
            del buf[: end + 4]
        if self._length >= 0:
            if len(buf) < self._length:
                if self._eof:
                    waiter.set_exception(HttpError("EOF inside response body"))
                return
            body = bytes(buf[: self._length])
            del buf[: self._length]
        elif self._eof:
            body = bytes(buf)
            buf.clear()
        else:
            return
        waiter.set_result((self._status, body, self._close_after or self._eof))

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        self._status = int(status)
        close = version == "HTTP/1.0"
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                token = value.strip().lower()
                close = token == "close" or (close and token != "keep-alive")
            elif name == "transfer-encoding" and value.strip().lower() != "identity":
                raise ValueError(f"unsupported Transfer-Encoding {value.strip()}")
        if length < 0:
            close = True  # the body runs to EOF, so the connection ends
        self._length = length
        self._close_after = close


class Connection:
    """One simulated client's link to the server.

    Keep-alive endpoints hold one connection and reopen it only if the server
    closes it; HTTP/1.0 endpoints connect, send, read and close per call --
    what xend's clients had to do.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.connects = 0
        self._proto: _ResponseProtocol | None = None
        #: perf_counter() when the first byte of the last response arrived
        self.first_byte_at = 0.0

    async def _open(self) -> _ResponseProtocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_ResponseProtocol, self.endpoint.host, self.endpoint.port)
        self.connects += 1
        return proto

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """Send one framed request; return (HTTP status, body) when complete.

        A keep-alive connection the server closed while idle is reopened
        before sending rather than counted as a failed call.  Closing a
        connection after the body is not awaited: the response is usable
        as soon as it has arrived.
        """
        proto = self._proto
        if proto is None or not proto.reusable:
            self._drop()
            proto = self._proto = await self._open()
        assert proto.transport is not None
        waiter = proto.expect()
        proto.transport.write(request)
        try:
            status, body, closes = await waiter
        except BaseException:
            self._drop()
            raise
        self.first_byte_at = proto.first_byte_at
        if closes or not self.endpoint.keep_alive:
            self._drop()
        return status, body

    def _drop(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None

    def close(self) -> None:
        """Release the socket, if any."""
        self._drop()

    async def rpc(self, method: str, *params: Any) -> Any:
        """A full Xen-API call for setup: returns Value or raises."""
        status, body = await self.call(self.endpoint.request(render_body(method, params)))
        if status != 200 or not is_success(body):
            raise HttpError(f"{method}: {describe_failure(status, body)}")
        (result,), _ = xmlrpc.client.loads(body)
        return result["Value"]
