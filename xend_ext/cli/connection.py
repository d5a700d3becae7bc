"""How ``xm`` reaches a server: http(s) URLs or a Unix socket path, with credentials from flags,
the environment (``XM_URL``, ``XM_USER``, ``XM_PASSWORD``) or ``~/.xm.conf`` (``key = value``)."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import ssl
import threading
import xmlrpc.client
from pathlib import Path

from .. import paths


class CliError(Exception):
    """A sentence for the user: what went wrong and what to do."""


class XenAPIFailure(Exception):
    def __init__(self, description: list[str]) -> None:
        super().__init__(description)
        self.code = description[0] if description else "UNKNOWN"
        self.params = description[1:]


def default_url() -> str:
    """The socket a server started without --unix listens on (xend_ext.paths)."""
    return str(paths.default_socket())


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


_WAKEUP: list[int] = []  # the read end of the pipe Python's signal handler writes a byte to
_INTERRUPTED = [False]  # a Ctrl-C not yet answered by a KeyboardInterrupt that reached xm's code


def _on_sigint(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    _INTERRUPTED[0] = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Ctrl-C ends xm even when its KeyboardInterrupt is lost.

    Python raises it wherever the main thread is, and when that is a finalizer (a finished HTTP
    response freed as the next request starts), the interpreter drops it silently. The handler
    also notes the interrupt, and the wait for every reply (``_wait_readable``) turns that note
    into a KeyboardInterrupt again.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def forget_interrupt() -> None:
    """The interrupt has been answered (the command is ending): the session may still be closed."""
    _INTERRUPTED[0] = False


def _wait_readable(sock) -> None:
    """Wait until the reply starts arriving, or a signal (Ctrl-C) comes.

    A blocking read cannot see a SIGINT that arrives just before it starts: Python runs signal
    handlers between bytecodes, and inside a read only when it is interrupted. event.next may
    block for hours, so that Ctrl-C would be lost. The signal's byte in the wakeup pipe (written
    by the C handler whenever it arrives) ends this select instead.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals go to the main thread only
    if not _WAKEUP:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        _WAKEUP.append(read_end)
    while True:
        if _INTERRUPTED[0]:
            forget_interrupt()
            raise KeyboardInterrupt
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return
        ready, _, _ = select.select([sock, _WAKEUP[0]], [], [], sock.gettimeout())
        if sock in ready or not ready:  # data, or the socket's own timeout (the read reports it)
            return
        try:
            os.read(_WAKEUP[0], 512)  # a signal came: its handler has run, or runs at the next bytecode
        except BlockingIOError:
            pass


class _Interruptible:
    """An HTTP connection whose wait for the reply Ctrl-C always ends (see _wait_readable)."""

    def getresponse(self):
        _wait_readable(self.sock)
        return super().getresponse()


class _HTTPConnection(_Interruptible, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Interruptible, http.client.HTTPSConnection):
    pass


class _Transport(xmlrpc.client.Transport):
    def make_connection(self, host):  # noqa: ANN001 - stdlib signature
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        self._connection = host, _HTTPConnection(chost)
        return self._connection[1]


class _SafeTransport(xmlrpc.client.SafeTransport):
    def make_connection(self, host):  # noqa: ANN001 - stdlib signature
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        self._connection = host, _HTTPSConnection(chost, context=self.context)
        return self._connection[1]


class _UnixConnection(_Interruptible, http.client.HTTPConnection):
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
        if url.startswith("https://"):
            context = ssl._create_unverified_context() if insecure else None  # noqa: S323 - asked for
            self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True, transport=_SafeTransport(context=context))
        elif url.startswith("http://"):
            self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True, transport=_Transport())
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
            forget_interrupt()
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
