"""The real server on a real socket, run on a loop in a thread of the test process: for the tests
that must reach inside it (libvirt's test driver lives in the process that opened it; the tests
that count work read the server's counters)."""

from __future__ import annotations

import asyncio
import threading

from xend_ext.server import Config, Server


class InProcessServer:
    """The real server on a real socket, run on a loop in a thread of the test process."""

    def __init__(self, config: Config) -> None:
        self.server = Server(config)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"server did not start: {self.error!r}")
        self.url = self.server.addresses[0]

    def _run(self) -> None:
        async def main():
            try:
                await self.server.start()
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                self.ready.set()
            await self.server.serve_forever()

        self.loop.run_until_complete(main())

    @property
    def conn(self):
        return self.server.backend.conn

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stopping.set)
        self.thread.join(30)
