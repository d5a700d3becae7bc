"""The server as a command sees it.

It logs in on the first call only, so commands that need no server (``xm create -n``) work
without one, and it remembers the names of the domains the command looked up, so an error that
carries only a reference (``VM_BAD_POWER_STATE [ref, ...]``) can still name the domain.
"""

from __future__ import annotations

from .connection import Connection


class Client:
    def __init__(self, url: str, user: str, password: str, *, insecure: bool = False) -> None:
        self.url = url
        self.user = user
        self.password = password
        self.insecure = insecure
        #: seconds one call may take; ``event-monitor`` sets None, event.next may block for hours
        self.timeout: float | None = 600.0
        #: ref or uuid -> name_label of every VM the command has seen
        self.names: dict[str, str] = {}
        #: what else the command is about (``pool``, ``cpu``...), so an error naming neither can
        #: still say which pool or CPU it means and what to type next
        self.about: dict[str, str] = {}
        self._conn: Connection | None = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(self.url, self.user, self.password, insecure=self.insecure,
                                    timeout=self.timeout)
        return self._conn

    def call(self, method: str, *args):
        return self.connection.call(method, *args)

    def this_host(self) -> str:
        """The host of the server the command talks to (in a pool each server is its own host, and
        ``host.get_all`` lists them all)."""
        return self.call("session.get_this_host", self.connection.session)

    def remember(self, ref: str, record: dict) -> None:
        """Note a VM's name under its ref and its uuid (errors may carry either)."""
        name = record.get("name_label", "")
        self.names[ref] = name
        if record.get("uuid"):
            self.names[record["uuid"]] = name
            self.names["OpaqueRef:" + record["uuid"]] = name

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
