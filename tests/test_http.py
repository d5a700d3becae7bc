"""The HTTP layer's pattern for the usual request reads exactly what httptools reads.

Two HttpProtocols get the same bytes, cut at the same places: one reads the usual requests by
its pattern, the other leaves everything to httptools. Both must hand the same requests to the
handler and write the same bytes back. Real protocol objects on a real loop; the transport only
records what is written.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import xmlrpc.client

from hypothesis import given, settings
from hypothesis import strategies as st

from xend_ext.http import Gate, HttpProtocol, Limits


class Recorder:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.written += part

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 40000)

    def set_write_buffer_limits(self, high: int) -> None: ...

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _run(chunks: list[bytes], usual: bool) -> tuple[list[tuple], bytes]:
    async def go():
        seen: list[tuple] = []

        def handler(request):
            seen.append((request.method, request.path, request.body, request.keep_alive))
            return 200, "text/xml", b"<r>%d</r>" % len(seen)

        proto = HttpProtocol(handler, Limits(max_body=300, max_header_bytes=400), Gate("t", 10))
        proto.usual = usual
        transport = Recorder()
        proto.connection_made(transport)
        for chunk in chunks:
            proto.data_received(chunk)
        return seen, bytes(transport.written)

    return asyncio.run(go())


_NAMES = ["Host", "User-Agent", "Content-Type", "Accept-Encoding", "Accept", "host", "X-Other", "Connection",
          "Content-length", "Expect"]
_VALUES = st.sampled_from(["localhost:9363", "text/xml", "gzip", "", " spaced ", "close", "keep-alive", "x\x7fy",
                           "100-continue", "é"])


@st.composite
def _request(draw) -> bytes:
    body = draw(st.binary(max_size=400))
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT"]))
    path = draw(st.sampled_from(["/", "/RPC2", "/RPC2", "/x", "/?q=1", "/import"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    headers = [(draw(st.sampled_from(_NAMES)), draw(_VALUES)) for _ in range(draw(st.integers(0, 4)))]
    length = draw(st.sampled_from([len(body), len(body), len(body) + 1, len(body) - 1, None]))
    if length is not None and length >= 0:
        spot = draw(st.integers(0, len(headers)))
        headers.insert(spot, ("Content-Length", str(length)))
        if draw(st.booleans()) and draw(st.booleans()):
            headers.append(("Content-Length", str(length)))
    head = f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("utf-8") + body


@settings(max_examples=300, deadline=None)
@given(st.lists(_request(), min_size=1, max_size=3), st.data())
def test_usual_requests_are_read_as_httptools_reads_them(requests, data):
    stream = b"".join(requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]
    assert _run(chunks, usual=True) == _run(chunks, usual=False)


def _as_xmlrpc_client_sends(body: bytes) -> bytes:
    """The bytes xmlrpc.client's transport writes for one call (through http.client)."""
    sent = io.BytesIO()

    class Capture(http.client.HTTPConnection):
        def send(self, data):
            sent.write(data)

    class Sending(xmlrpc.client.Transport):
        def make_connection(self, host):
            return Capture(host)

    Sending().send_request("localhost:9363", "/RPC2", body, False)
    return sent.getvalue()


def test_the_official_clients_request_takes_the_usual_path():
    body = xmlrpc.client.dumps(("OpaqueRef:1", "OpaqueRef:2"), "host.get_record").encode()
    request = _as_xmlrpc_client_sends(body)

    async def go():
        seen = []
        proto = HttpProtocol(lambda r: seen.append(r) or (200, "text/xml", b"x"), Limits(), Gate("t", 10))
        proto.connection_made(Recorder())
        proto.parser = None  # the parser is never asked: reading it would fail
        proto.data_received(request * 3)
        return seen

    seen = asyncio.run(go())
    assert [(r.method, r.path, r.body, r.keep_alive) for r in seen] == [("POST", "/RPC2", body, True)] * 3
