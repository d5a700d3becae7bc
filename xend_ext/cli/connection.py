"""How ``xm`` reaches a server: http(s) URLs or a Unix socket path, with credentials from flags,
the environment (``XM_URL``, ``XM_USER``, ``XM_PASSWORD``) or ``~/.xm.conf`` (``key = value``)."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import xmlrpc.client
from pathlib import Path


class CliError(Exception):
    """A sentence for the user: what went wrong and what to do."""


class XenAPIFailure(Exception):
    def __init__(self, description: list[str]) -> None:
        super().__init__(description)
        self.code = description[0] if description else "UNKNOWN"
        self.params = description[1:]


def default_url() -> str:
    state = Path(os.environ.get("XEND_EXT_STATE", "./var/state"))
    return str(state / "xen-api.sock")


def read_conf(path: Path) -> dict[str, str]:
    conf: dict[str, str] = {}
    if not path.exists():
        return conf
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    return conf


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_connection(self, host):  # noqa: ANN001 - stdlib signature
        if self._connection[1] is None or self._connection[0] != host:
            self._connection = host, _UnixConnection(self.path, self.timeout)
        return self._connection[1]


class Connection:
    """A logged-in Xen-API session; ``call("VM.start", ref, False)`` returns the Value or raises."""

    def __init__(self, url: str, user: str, password: str, *, insecure: bool = False,
                 timeout: float | None = 600.0) -> None:
        self.url = url
        if url.startswith(("http://", "https://")):
            context = ssl._create_unverified_context() if insecure else None  # noqa: S323 - asked for
            self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True, context=context)
        else:
            self.proxy = xmlrpc.client.ServerProxy("http://localhost/", allow_none=True,
                                                   transport=_UnixTransport(url, timeout))
        self.session = self._raw("session.login_with_password", user, password, "1.1", "xm")

    def _raw(self, method: str, *args):
        try:
            reply = getattr(self.proxy, method)(*args)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise CliError(f"cannot reach the server at {self.url} ({exc.strerror}); is 'xend-ext serve' "
                           "running? Give another address with --url or XM_URL.") from None
        except OSError as exc:
            raise CliError(f"cannot talk to {self.url}: {exc}") from None
        except xmlrpc.client.ProtocolError as exc:
            raise CliError(f"the server at {self.url} refused the request: HTTP {exc.errcode} {exc.errmsg}") from None
        except http.client.HTTPException as exc:
            self._reset()
            raise CliError(f"the connection to {self.url} broke ({type(exc).__name__}); "
                           "run the command again") from None
        except KeyboardInterrupt:
            # xmlrpc leaves a connection interrupted mid-request half-used; the next call (the
            # logout on the way out) needs a fresh one
            self._reset()
            raise
        if not isinstance(reply, dict) or "Status" not in reply:
            raise CliError(f"{self.url} does not answer like a Xen-API server")
        if reply["Status"] == "Success":
            return reply.get("Value", "")
        raise XenAPIFailure(list(reply.get("ErrorDescription", [])))

    def _reset(self) -> None:
        self.proxy("close")()

    def call(self, method: str, *args):
        return self._raw(method, self.session, *args)

    def close(self) -> None:
        try:
            self.call("session.logout")
        except (XenAPIFailure, CliError):
            pass
