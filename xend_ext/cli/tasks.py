"""Long operations as ``Async.`` tasks, watched until they end.

Starting, stopping, saving or migrating a domain may take a while on a real host; as a task the
call returns at once, the client can show progress, and a lost connection does not lose the
outcome. The task is watched with ``event.from`` (no polling delay), or ``task.get_record`` when
the server has no event.from.
"""

from __future__ import annotations

import sys
import time
import xmlrpc.client

from .client import Client
from .connection import CliError, XenAPIFailure

BAR = 20
DONE = ("success", "failure", "cancelled")


class Progress:
    """``[####      ] 40%`` on stderr, only when a person watches it (stderr is a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def update(self, fraction: float) -> None:
        if not self.enabled:
            return
        fraction = max(0.0, min(1.0, fraction))
        filled = int(round(fraction * BAR))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{' ' * (BAR - filled)}] {int(fraction * 100):3d}%")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * (len(self.label) + BAR + 8) + "\r")
            sys.stderr.flush()


def run(client: Client, method: str, *args, label: str = "", wait: float | None = None) -> tuple[str, object]:
    """Run ``Async.<method>`` and wait for it: (status, result value).

    A failed task raises the same XenAPIFailure a direct call would, so its sentence is the same.
    ``wait``: give up watching after that many seconds and return ("pending", None) (the operation
    goes on on the server).
    """
    task = client.call("Async." + method, *args)
    progress = Progress(label or method)
    deadline = None if wait is None else time.monotonic() + wait
    try:
        record = watch(client, task, progress, deadline)
    except KeyboardInterrupt:
        progress.finish()
        raise CliError(f"interrupted; {method} goes on on the server as task {task} "
                       "(it can be cancelled with task.cancel)") from None
    progress.finish()
    status = record.get("status", "")
    if status not in DONE:
        return "pending", None
    forget(client, task)
    if status == "failure":
        raise XenAPIFailure(list(record.get("error_info") or ["INTERNAL_ERROR", "the task failed without a reason"]))
    if status == "cancelled":
        raise CliError(f"{method} was cancelled before it finished")
    return status, result_value(record.get("result", ""))


def watch(client: Client, task: str, progress: Progress, deadline: float | None) -> dict:
    token = ""
    use_events = True
    record: dict = {}
    while True:
        timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        if use_events:
            try:
                answer = client.call("event.from", [f"task/{task}"], token, timeout)
            except XenAPIFailure as exc:
                if exc.code not in ("MESSAGE_METHOD_UNKNOWN", "EVENT_SUBSCRIPTION_PARSE_FAILURE",
                                    "EVENT_FROM_TOKEN_PARSE_FAILURE"):
                    raise
                use_events = False
                continue
            token = answer["token"]
            for event in answer["events"]:
                if event.get("ref") != task:
                    continue
                if event.get("operation") == "del":  # someone forgot the task under us
                    raise CliError(f"task {task} was destroyed before it finished; check the domain's state")
                record = event.get("snapshot") or record
        else:
            record = client.call("task.get_record", task)
            if record.get("status") not in DONE:
                time.sleep(min(0.2, timeout))
        if record:
            progress.update(float(record.get("progress", 0.0) or 0.0))
        if record.get("status") in DONE:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            return record


def forget(client: Client, task: str) -> None:
    """Finished tasks are ours to clean up (XAPI leaves that to the client)."""
    try:
        client.call("task.destroy", task)
    except XenAPIFailure:
        pass


def result_value(text: str):
    """A task's ``result`` is the XML-RPC text of the value (``<value>OpaqueRef:…</value>``)."""
    if not text:
        return None
    if "<value" not in text:
        return text
    try:
        (value,), _ = xmlrpc.client.loads(f"<methodResponse><params><param>{text}</param></params></methodResponse>")
    except Exception:  # a result we cannot read is still worth showing as it is
        return text
    return value
