"""``task``: what an ``Async.`` call returns. Tasks live in memory (as in XAPI); the finished
ones beyond a limit are forgotten oldest first."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from xend_ext import hosts
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, RW, Field, XenAPIClass
from xend_ext.dispatch import Context
from xend_ext.wire import XenAPIError, dump_value

log = logging.getLogger("xend_ext.task")

MAX_FINISHED = 200
STATUS = T.Enum("task_status_type", "pending", "success", "failure", "cancelling", "cancelled")


def _now():
    return dt.datetime.now(dt.UTC)


task = XenAPIClass(
    "task",
    "A long-running asynchronous operation",
    [
        Field("name_label", T.String, RO, doc="the message the task runs"),
        Field("name_description", T.String, RO, doc="what the task does, in words"),
        Field("status", STATUS, RO, doc="pending until the operation ends"),
        Field("progress", T.Float, RO, doc="0..1; not a completion signal, status is"),
        Field("created", T.DateTime, RO, default=_now, doc="when the task started (UTC)"),
        Field("finished", T.DateTime, RO, doc="when it ended (UTC); the epoch while pending"),
        Field("result", T.String, RO, doc="the XML-RPC text of the operation's return value"),
        Field("error_info", T.Set(T.String), RO, doc="the ErrorDescription if it failed"),
        Field("type", T.String, RO, doc="the return type"),
        Field("resident_on", T.Ref("host", nullable=True), RO, doc="the host running it"),
        Field("owner", T.String, RO, doc="the user who started it"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=READ_ONLY,
    persist=False,
)

_cancel_requested: set[str] = set()


def _check_owner(ctx, obj, what):
    """Only the task's owner, or a pool-admin, may change or end it (every setter, cancel, destroy)."""
    if ctx.role != POOL_ADMIN and obj.values["owner"] != ctx.session.values["this_user"]:
        raise XenAPIError("RBAC_PERMISSION_DENIED", f"task.{what}", "only the task's owner or a pool-admin may")


@task.message(("self", T.Ref("task")), result=None, async_ok=False, errors=("OPERATION_NOT_ALLOWED",))
def cancel(ctx, ref):
    """Ask a pending task to stop at its next safe point; operations that cannot stop finish."""
    obj = ctx.db.get(ref)
    _check_owner(ctx, obj, "cancel")
    if obj.values["status"] != "pending":
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"task {obj.uuid} is {obj.values['status']}, not pending")
    _cancel_requested.add(ref)
    ctx.db.set(obj, "status", "cancelling")


@task.message(("self", T.Ref("task")), result=None, async_ok=False)
def destroy(ctx, ref):
    """Forget a task (a pending one keeps running; only its record goes)."""
    obj = ctx.db.get(ref)
    _check_owner(ctx, obj, "destroy")
    _cancel_requested.discard(ref)
    ctx.db.destroy(obj)


def checkpoint(ctx):
    """Long operations call this between steps: raises TASK_CANCELLED if the client asked."""
    if ctx.task is not None and ctx.task.ref in _cancel_requested:
        raise XenAPIError("TASK_CANCELLED", ctx.task.ref)


def set_progress(ctx, fraction):
    if ctx.task is not None and ctx.db.find(ctx.task.ref) is ctx.task:
        ctx.db.set(ctx.task, "progress", max(0.0, min(1.0, float(fraction))))


async def start_task(ctx, name, msg, args):
    """Create the task, run the message in the background, answer with the task at once."""
    host = hosts.this_host(ctx.db)
    obj = ctx.db.create("task", {
        "name_label": name, "status": "pending", "type": msg.result.name if msg.result else "void",
        "resident_on": host.ref if host else "OpaqueRef:NULL",
        "owner": ctx.session.values["this_user"],
    })
    body_ctx = Context(ctx.services, name)
    body_ctx.session, body_ctx.role, body_ctx.task = ctx.session, ctx.role, obj
    asyncio.get_running_loop().create_task(_run(body_ctx, msg, args))
    _forget_old(ctx)
    return obj.ref


async def _run(ctx, msg, args):
    db = ctx.db
    obj = ctx.task
    try:
        checkpoint(ctx)
        value = msg.impl(ctx, *args)
        if msg.is_async_impl:
            value = await value
        outcome = {"status": "success"}
        if value is not None:  # a void operation may have written its own result (group outcomes)
            outcome["result"] = _result_text(value)
    except XenAPIError as exc:
        status = "cancelled" if exc.code == "TASK_CANCELLED" else "failure"
        outcome = {"status": status, "error_info": exc.description}
    except Exception as exc:
        log.exception("internal error in task %s", msg.name)
        outcome = {"status": "failure", "error_info": ["INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"]}
    _cancel_requested.discard(obj.ref)
    try:  # a failed operation may have changed things too (a rollback): durable before it is reported
        await ctx.services.commit(db.last_seq)
    except Exception as exc:
        log.error("journal write failed after task %s: %s", msg.name, exc)
        outcome = {"status": "failure",
                   "error_info": ["INTERNAL_ERROR", f"the change could not be made durable: {exc}"]}
    if db.find(obj.ref) is not obj:
        return  # destroyed while running
    for name, value in {**outcome, "progress": 1.0, "finished": _now()}.items():
        db.set(obj, name, value)


def _result_text(value):
    """XAPI puts the XML-RPC text of the value in ``result`` (e.g. ``<value>OpaqueRef:…</value>``)."""
    return "" if value is None else dump_value(value)


def _forget_old(ctx):
    done = [t for t in ctx.db.all("task") if t.values["status"] not in ("pending", "cancelling")]
    if len(done) > MAX_FINISHED:
        done.sort(key=lambda t: t.values["finished"])
        for t in done[: len(done) - MAX_FINISHED]:
            ctx.db.destroy(t)


def install(registry):
    task.changeable = _check_owner
    registry.add(task)
    registry.start_task = start_task
    registry.checkpoint = checkpoint
    registry.set_progress = set_progress
