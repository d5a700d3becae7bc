"""``xm event-monitor``: print the server's events as they happen, one line each.

It uses xend's ``event.register`` + ``event.next`` (the server queues events for this session
between calls, so none is missed while a batch is printed). One line per event keeps it usable
with grep and in scripts; ``--count`` makes it stop by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from .args import arg, note
from .client import Client
from .connection import XenAPIFailure


def _when(stamp: str) -> str:
    try:
        moment = dt.datetime.fromtimestamp(float(stamp), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(stamp)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def line(event: dict) -> str:
    """``<timestamp> <class> <operation> <ref> <name_label>`` (the name when the object has one)."""
    snapshot = event.get("snapshot") or {}
    name = snapshot.get("name_label", "") if isinstance(snapshot, dict) else ""
    parts = [_when(event.get("timestamp", "")), event.get("class", "?"), event.get("operation", "?"),
             event.get("ref", "?")]
    return " ".join(parts + ([name] if name else []))


def event_monitor(client: Client, args) -> int:
    """Print events as they happen: <timestamp> <class> <operation> <ref> [<name>].

    CLASS limits them (e.g. VM, VM_metrics, task, host); none means every class. Ctrl-C stops.
    """
    client.timeout = None  # event.next blocks until something happens, however long that is
    classes = list(args.classes)
    printed = 0
    try:
        client.call("event.register", classes)
        note(f"Watching events of {', '.join(classes) or 'every class'}; Ctrl-C stops.")
        while args.count is None or printed < args.count:
            try:
                batch = client.call("event.next")
            except XenAPIFailure as exc:
                if exc.code not in ("EVENTS_LOST", "SESSION_NOT_REGISTERED"):
                    raise
                note("Warning: the server dropped events this monitor was too slow to read; watching again.")
                client.call("event.register", classes)
                continue
            for event in sorted(batch, key=lambda e: int(e.get("id", 0) or 0)):
                print(line(event), flush=True)
                printed += 1
                if args.count is not None and printed >= args.count:
                    break
    except KeyboardInterrupt:
        sys.stdout.flush()
        return 0
    try:
        client.call("event.unregister", classes)
    except XenAPIFailure:
        pass
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the count must be at least 1")
    return value


COMMANDS = {
    "event-monitor": (event_monitor, [
        arg("classes", nargs="*", metavar="CLASS", help="event classes to watch (default: every class)"),
        arg("--count", type=_count, metavar="N", help="stop after N events"),
    ]),
}
