"""A fault-injecting stand-in around the real backend (tests only; the one allowed stand-in).

The server wraps its backend in :class:`FaultBackend` when started with
``XEND_EXT_TEST_BACKEND_WRAPPER=faultbackend:FaultBackend`` (tests/ on ``PYTHONPATH``) and
``XEND_EXT_TEST_FAULTS=<control file>``. It fails the N-th *action* (a call that changes the
hypervisor: start, pause, set_memory, pool_activate, set_sched_domains...; facts such as
``domains()`` are never failed or counted) with a ``BackendError``, before the real backend is
asked: the hypervisor did nothing, as when it refuses an action.

The test arms it by writing ``"N TOKEN"`` to the control file; counting starts again at each new
TOKEN. Every counted call is appended to ``<control file>.log`` as ``TOKEN INDEX NAME`` (with
`` FAILED`` for the one failed), so the test sees how many actions an operation made.

A slow hypervisor, for tests that race: ``"NAME SECONDS"`` in ``<control file>.slow`` makes every
NAME action wait that long before it runs (the server's call holds its locks meanwhile).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from xend_ext.backends.base import BackendError

ACTIONS = frozenset({
    "start", "shutdown", "reboot", "pause", "unpause", "suspend", "resume", "save", "export", "restore",
    "set_memory", "set_memory_max", "set_vcpus", "pin", "set_sched", "pool_activate", "pool_deactivate",
    "pool_add_cpu", "pool_remove_cpu", "pool_move_domain", "set_sched_domains", "set_occupancy", "define",
    "undefine",
})

ENV_WRAPPER, ENV_CONTROL = "XEND_EXT_TEST_BACKEND_WRAPPER", "XEND_EXT_TEST_FAULTS"


class FaultBackend:
    """Delegates everything to ``inner``; actions go through :meth:`_count` first."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._control = Path(os.environ[ENV_CONTROL])
        self._log = Path(str(self._control) + ".log")
        self._token = ""
        self._calls = 0
        self._lock = threading.Lock()  # actions run in the server's worker threads

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name not in ACTIONS:
            return value

        def action(*args, **kwargs):
            self._count(name)
            self._slow(name)
            return value(*args, **kwargs)

        return action

    def _slow(self, name: str) -> None:
        try:
            slow, seconds = Path(str(self._control) + ".slow").read_text(encoding="utf-8").split()
        except (FileNotFoundError, ValueError):
            return
        if slow == name:
            time.sleep(float(seconds))

    def _count(self, name: str) -> None:
        with self._lock:
            try:
                fail_at, token = self._control.read_text(encoding="utf-8").split()
            except (FileNotFoundError, ValueError):
                return  # not armed
            if token != self._token:
                self._token, self._calls = token, 0
            self._calls += 1
            fail = self._calls == int(fail_at)
            with open(self._log, "a", encoding="utf-8") as log:
                log.write(f"{token} {self._calls} {name}{' FAILED' if fail else ''}\n")
        if fail:
            raise BackendError(f"injected fault: action {self._calls} ({name}) failed")


class Faults:
    """The test's side: arm the wrapper of one server and read what it counted."""

    def __init__(self, control: Path) -> None:
        self.control = Path(control)
        self.log = Path(str(self.control) + ".log")
        self._tokens = 0

    def env(self) -> dict[str, str]:
        tests = str(Path(__file__).resolve().parent)
        path = os.environ.get("PYTHONPATH", "")
        return {ENV_WRAPPER: "faultbackend:FaultBackend", ENV_CONTROL: str(self.control),
                "PYTHONPATH": tests + (os.pathsep + path if path else "")}

    def arm(self, n: int) -> str:
        """Fail the n-th action from now on; returns the token of this arming."""
        self._tokens += 1
        token = f"t{self._tokens}"
        self.control.write_text(f"{n} {token}\n", encoding="utf-8")
        return token

    def disarm(self) -> None:
        self.control.unlink(missing_ok=True)

    def slow(self, action: str, seconds: float) -> None:
        """Make every ``action`` of the hypervisor take ``seconds`` from now on."""
        Path(str(self.control) + ".slow").write_text(f"{action} {seconds}\n", encoding="utf-8")

    def fast(self) -> None:
        Path(str(self.control) + ".slow").unlink(missing_ok=True)

    def calls(self, token: str) -> list[str]:
        """The actions counted under ``token``, in order (a failed one ends with ' FAILED')."""
        if not self.log.exists():
            return []
        return [line.split(" ", 2)[2] for line in self.log.read_text(encoding="utf-8").splitlines()
                if line.startswith(token + " ")]
