"""``session``: login, logout and who is calling. Sessions live in memory only, as in XAPI and
xend: after a restart clients get ``SESSION_INVALID`` and the official client logs in again."""

from __future__ import annotations

import datetime as dt

from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, Field, XenAPIClass
from xend_ext.model import new_uuid
from xend_ext.wire import REF_PREFIX, XenAPIError

MAX_SESSIONS = 10_000
INACTIVE_LIMIT = dt.timedelta(hours=24)


def _now():
    return dt.datetime.now(dt.UTC)


session = XenAPIClass(
    "session",
    "A connection of a client to the server",
    [
        Field("this_host", T.Ref("host"), RO, doc="the host the session is on"),
        Field("this_user", T.String, RO, doc="the user who logged in"),
        Field("role", T.String, RO, doc="the user's role: read-only, vm-operator or pool-admin"),
        Field("originator", T.String, RO, doc="what the client said it is"),
        Field("last_active", T.DateTime, RO, default=_now, doc="time of the last call"),
        Field("validation_time", T.DateTime, RO, default=_now, doc="time of the login"),
        Field("is_local_superuser", T.Bool, RO),
    ],
    default_role=READ_ONLY,
    persist=False,
    events=False,
)


def check_session(ctx, ref):
    """The dispatcher's session check: exact refs only (a session's uuid is not a credential)."""
    obj = ctx.db.find(ref)
    if obj is None or obj.cls is not session:
        raise XenAPIError("SESSION_INVALID", ref)
    obj.values["last_active"] = _now()
    return obj


def _visible(ctx, obj):
    """Sessions are private: your own, or any for a pool-admin."""
    return ctx.role == POOL_ADMIN or (ctx.session is not None and obj.ref == ctx.session.ref)


def _evict(ctx):
    sessions = list(ctx.db.all("session"))
    cutoff = _now() - INACTIVE_LIMIT
    stale = [s for s in sessions if s.values["last_active"] < cutoff]
    if len(sessions) - len(stale) >= MAX_SESSIONS:
        live = sorted((s for s in sessions if s not in stale), key=lambda s: s.values["last_active"])
        stale += live[: len(sessions) - len(stale) - MAX_SESSIONS + 1]
    for s in stale:
        ctx.services.hub.forget_session(s.ref)
        ctx.db.destroy(s)


@session.message(("uname", T.String), ("pwd", T.String), ("version", T.String, "1.1"),
                 ("originator", T.String, ""), result=T.Ref("session"), session=False, async_ok=False,
                 errors=("SESSION_AUTHENTICATION_FAILED",))
async def login_with_password(ctx, uname, pwd, version, originator):
    """Log in; with auth ``none`` anyone is pool-admin, with ``file`` the password file decides."""
    role = await ctx.services.auth.authenticate(uname, pwd)
    if role is None:
        raise XenAPIError("SESSION_AUTHENTICATION_FAILED")
    _evict(ctx)
    host = ctx.db.first("host")
    obj = ctx.db.create("session", {
        "this_host": host.ref if host else "OpaqueRef:NULL",
        "this_user": uname,
        "role": role,
        "originator": originator,
        "is_local_superuser": role == POOL_ADMIN,
    }, ref=REF_PREFIX + new_uuid())
    return obj.ref


@session.message(result=None, async_ok=False)
def logout(ctx):
    """End this session."""
    ctx.services.hub.forget_session(ctx.session.ref)
    ctx.db.destroy(ctx.session)


def install(registry):
    session.visible = _visible
    registry.add(session)
    registry.check_session = check_session
