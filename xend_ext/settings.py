"""How ``xend-ext serve`` is set up as a service: its settings file, its log lines, and telling
systemd it is ready.

The settings file is TOML (``tomllib`` is in the standard library from Python 3.11, which the
project needs anyway; it has types, comments and lists, and every admin has met it). Its keys
are the ``serve`` flags without their dashes' leading ``--`` (``state-dir``, ``listen``,
``max-body``...), so ``xend-ext serve --help`` documents the file too; a flag given on the
command line overrides the file. contrib/xend-ext.toml lists every key.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tomllib
from pathlib import Path

from .observe import utc_formatter


class SettingsError(Exception):
    """A settings file that cannot be used, said in one line."""


def _given(action: argparse.Action, argv: list[str]) -> bool:
    """Whether the command line sets this flag itself (``--x V`` or ``--x=V``)."""
    return any(arg == opt or arg.startswith(opt + "=") for arg in argv for opt in action.option_strings)


def _value(action: argparse.Action, key: str, value, path: Path):
    """A file's value as the flag's parsed value, checked the way argparse checks the flag's."""
    def one(item):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise SettingsError(f"{path}: {key} wants a {'list of ' if action.nargs else ''}"
                                f"{getattr(action.type, '__name__', 'str')}, not {item!r}")
        try:
            converted = action.type(str(item)) if action.type else str(item)
        except (TypeError, ValueError):
            raise SettingsError(f"{path}: {key} cannot be {item!r}") from None
        if action.choices is not None and converted not in action.choices:
            raise SettingsError(f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, not {item!r}")
        return converted

    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001 - the one way to ask argparse
        if not isinstance(value, bool):
            raise SettingsError(f"{path}: {key} is true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):  # noqa: SLF001
        return [one(item) for item in (value if isinstance(value, list) else [value])]
    return one(value)


def apply_file(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Fill ``args`` from the settings file (``--config`` or ``$XEND_EXT_CONFIG``), except what the
    command line gave."""
    path = args.config or (Path(os.environ["XEND_EXT_CONFIG"]) if os.environ.get("XEND_EXT_CONFIG") else None)
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    actions = {a.option_strings[0][2:]: a for a in parser._actions  # noqa: SLF001
               if a.option_strings and a.option_strings[0].startswith("--") and a.dest not in ("help", "config")}
    for key, value in table.items():
        action = actions.get(key)
        if action is None:
            raise SettingsError(f"{path}: unknown setting {key!r}; the settings are the serve flags: "
                                f"{', '.join(sorted(actions))}")
        if not _given(action, argv):
            setattr(args, action.dest, _value(action, key, value, path))


def setup_logging(level: str) -> None:
    """Log lines on stderr with their UTC time and level (journald keeps stderr under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(utc_formatter("%(asctime)s.%(msecs)03dZ xend-ext %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def notify_ready(status: str) -> None:
    """Tell systemd the server is listening (``Type=notify``): READY=1 on $NOTIFY_SOCKET, the
    datagram sd_notify(3) sends; nothing when systemd did not start us."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"READY=1\nSTATUS=listening on {status}\nMAINPID={os.getpid()}".encode(), address)
    except OSError as exc:
        logging.getLogger("xend_ext").warning("could not notify systemd at %s: %s", target, exc)
