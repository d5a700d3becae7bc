"""Where a server keeps its state and its socket when no flag says, so that ``xend-ext serve``
and ``xm`` agree from any directory.

root: ``/var/lib/xend-ext`` and ``/run/xend-ext/xen-api.sock`` (as a system service). Anyone else:
``$XDG_STATE_HOME/xend-ext`` (``~/.local/state/xend-ext``) and
``$XDG_RUNTIME_DIR/xend-ext/xen-api.sock`` (the state directory when there is no runtime
directory). ``$XEND_EXT_STATE`` names the state directory instead, and its socket is in it.
``make run`` gives ``--state-dir var/state`` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET = "xen-api.sock"


def _root() -> bool:
    return os.geteuid() == 0


def default_state_dir() -> Path:
    if os.environ.get("XEND_EXT_STATE"):
        return Path(os.environ["XEND_EXT_STATE"])
    if _root():
        return Path("/var/lib/xend-ext")
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "xend-ext"


def default_socket() -> Path:
    if os.environ.get("XEND_EXT_STATE"):
        return Path(os.environ["XEND_EXT_STATE"]) / SOCKET
    if _root():
        return Path("/run/xend-ext") / SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime) / "xend-ext" if runtime else default_state_dir()) / SOCKET
