"""The floor of P1: what one small call costs a server that does nothing but the I/O.

A bare ``asyncio.Protocol`` on the loop xend-ext runs on (uvloop's where installed) answers
every XML-RPC request with the same success reply, as large as xend-ext's ``host.get_record``
reply on the P1 host: one read and one write per call, no HTTP parser, no XML, no dispatch. Its
server CPU per call is what the kernel and the event loop take, the part of P1's figure that
no work in xend-ext can remove. A request is recognised by the end of its body
(``</methodCall>``), which the bench's clients always send whole.

``python -m bench.floor_server --port P [--body-bytes N]``
"""

from __future__ import annotations

import argparse
import asyncio

#: The size of xend-ext's host.get_record reply body with 8 host CPUs.
BODY_BYTES = 2394
_END = b"</methodCall>"


def reply(body_bytes: int) -> bytes:
    head = (b"<?xml version='1.0'?>\n<methodResponse><params><param><value><struct><member><name>Status</name>"
            b"<value>Success</value></member><member><name>Value</name><value>")
    tail = b"</value></member></struct></value></param></params></methodResponse>\n"
    body = head + b"x" * max(1, body_bytes - len(head) - len(tail)) + tail
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n" \
           b"Connection: keep-alive\r\n\r\n%s" % (len(body), body)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        calls = data.count(_END)
        if calls:
            self.transport.write(self.answer * calls)
            data = data[data.rindex(_END) + len(_END):]
        self.pending = data[-(64 << 10):]  # a client that never ends a request holds 64 KiB at most


async def serve(host: str, port: int, body_bytes: int) -> None:
    answer = reply(body_bytes)
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(answer), host, port, backlog=1024)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-bytes", type=int, default=BODY_BYTES)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.body_bytes))
        return
    uvloop.run(serve(args.host, args.port, args.body_bytes))


if __name__ == "__main__":
    main()
