"""``session``: login, logout and who is calling. Sessions live in memory only, as in XAPI and
xend: after a restart clients get ``SESSION_INVALID`` and the official client logs in again."""

from __future__ import annotations

import datetime as dt

from xend_ext import forward, hosts
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, ROLES, Field, XenAPIClass
from xend_ext.model import new_uuid
from xend_ext.wire import REF_PREFIX, XenAPIError

MAX_SESSIONS = 10_000  # in all
MAX_SESSIONS_PER_USER = 2_000
INACTIVE_LIMIT = dt.timedelta(hours=24)


def _now():
    return dt.datetime.now(dt.UTC)


session = XenAPIClass(
    "session",
    "A connection of a client to the server",
    [
        Field("this_host", T.Ref("host"), RO, doc="the host the session is on"),
        Field("this_user", T.String, RO, index=True, doc="the user who logged in"),
        Field("role", T.String, RO, doc="the user's role: read-only, vm-operator or pool-admin"),
        Field("originator", T.String, RO, doc="what the client said it is"),
        Field("last_active", T.DateTime, RO, default=_now, doc="time of the last call"),
        Field("validation_time", T.DateTime, RO, default=_now, doc="time of the login"),
        Field("is_local_superuser", T.Bool, RO, doc="whether the session has the pool-admin role"),
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


def _end(ctx, obj):
    ctx.services.hub.forget_session(obj.ref)
    ctx.db.destroy(obj)


def _make_room(ctx, user):
    """Room for one more session of ``user``; a login never ends another user's live session.

    A user with MAX_SESSIONS_PER_USER sessions loses their least recently active one. When the
    server holds MAX_SESSIONS in all, sessions idle for INACTIVE_LIMIT end (anyone's: they have
    expired), then the user's own least recently active one; a user with none is refused
    (OPERATION_NOT_ALLOWED) until others log out or expire."""
    mine = ctx.db.find_by("session", "this_user", user)
    if len(mine) >= MAX_SESSIONS_PER_USER:
        _end(ctx, _least_active(ctx, mine))
    if ctx.db.count("session") < MAX_SESSIONS:
        return
    cutoff = _now() - INACTIVE_LIMIT
    for obj in [o for o in ctx.db.all("session") if o.values["last_active"] < cutoff]:
        _end(ctx, obj)
    if ctx.db.count("session") < MAX_SESSIONS:
        return
    mine = ctx.db.find_by("session", "this_user", user)
    if not mine:
        raise XenAPIError("OPERATION_NOT_ALLOWED",
                          f"the server holds {MAX_SESSIONS} sessions; try again once some log out or expire")
    _end(ctx, _least_active(ctx, mine))


def _least_active(ctx, sessions):
    return min(sessions, key=lambda o: o.values["last_active"])


@session.message(("uname", T.String), ("pwd", T.String), ("version", T.String, "1.1"),
                 ("originator", T.String, ""), result=T.Ref("session"), session=False, async_ok=False,
                 errors=("SESSION_AUTHENTICATION_FAILED", "OPERATION_NOT_ALLOWED"))
async def login_with_password(ctx, uname, pwd, version, originator):
    """Log in; with auth ``none`` anyone is pool-admin, with ``file`` the password file decides.
    A user keeps at most 2,000 sessions (a new login ends their least recently active one); the
    server keeps 10,000 in all, and a login never ends another user's live session: when the server
    is full and the user has none, OPERATION_NOT_ALLOWED."""
    role = await ctx.services.auth.authenticate(uname, pwd)
    if role is None:
        raise XenAPIError("SESSION_AUTHENTICATION_FAILED")
    _make_room(ctx, uname)
    return _open(ctx, uname, role, originator)


def _open(ctx, uname, role, originator):
    obj = ctx.db.create("session", {
        "this_host": hosts.this_ref(ctx.db),
        "this_user": uname,
        "role": role,
        "originator": originator,
        "is_local_superuser": role == POOL_ADMIN,
    }, ref=REF_PREFIX + new_uuid())
    return obj.ref


@session.message(("secret", T.String), ("uname", T.String), ("role", T.String), ("originator", T.String, ""),
                 result=T.Ref("session"), session=False, async_ok=False, errors=("SESSION_AUTHENTICATION_FAILED",))
def pool_login(ctx, secret, uname, role, originator):
    """Another host of the pool opens a session here for a call it hands over (the call's object
    is on this host): with the pool's secret, as the user who made the call there, whose role was
    checked there. Refused (SESSION_AUTHENTICATION_FAILED) on a server alone or with any other
    secret."""
    if not forward.accepts(ctx.services, secret) or role not in ROLES:
        raise XenAPIError("SESSION_AUTHENTICATION_FAILED")
    _make_room(ctx, uname)
    return _open(ctx, uname, role, originator)


@session.message(result=None, async_ok=False)
def logout(ctx):
    """End this session."""
    _end(ctx, ctx.session)


def install(registry):
    session.visible = _visible
    registry.add(session)
    registry.check_session = check_session
