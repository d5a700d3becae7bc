"""``event``: XAPI's ``event.from`` and xend's ``register``/``unregister``/``next``."""

from __future__ import annotations

from xend_ext import types as T
from xend_ext.datamodel import READ_ONLY, XenAPIClass
from xend_ext.events import Subscription, parse_token

MAX_TIMEOUT = 3600.0

event = XenAPIClass("event", "Notifications of changes to objects", [], default_role=READ_ONLY,
                    persist=False, events=False, generic=False)


@event.message(("classes", T.Set(T.String)), ("token", T.String), ("timeout", T.Float), result=T.Struct,
               name="from", async_ok=False,
               errors=("EVENT_FROM_TOKEN_PARSE_FAILURE", "EVENT_SUBSCRIPTION_PARSE_FAILURE"))
async def event_from(ctx, classes, token, timeout):
    """Changes since ``token`` (``""``: every object as ``add``), waiting up to ``timeout`` s."""
    hub = ctx.services.hub
    sub = Subscription(classes, hub.known_classes)
    since = parse_token(token)
    return await hub.wait_from(sub, since, max(0.0, min(timeout, MAX_TIMEOUT)))


@event.message(("classes", T.Set(T.String)), result=None, async_ok=False,
               errors=("EVENT_SUBSCRIPTION_PARSE_FAILURE",))
def register(ctx, classes):
    """Start queueing events of these classes for this session (empty: every class)."""
    ctx.services.hub.register(ctx.session.ref, classes)


@event.message(("classes", T.Set(T.String)), result=None, async_ok=False)
def unregister(ctx, classes):
    """Stop queueing these classes (empty: all of them)."""
    ctx.services.hub.unregister(ctx.session.ref, classes)


@event.message(result=T.Set(T.Struct), async_ok=False, errors=("SESSION_NOT_REGISTERED", "EVENTS_LOST"))
async def next(ctx):  # noqa: A001 - the wire name is event.next
    """Block until at least one queued event, then return all of them."""
    ref = ctx.session.ref
    return await ctx.services.hub.next(ref, lambda: ctx.db.find(ref) is not None)


@event.message(result=T.Int, async_ok=False)
def get_current_id(ctx):
    """The newest event generation."""
    return ctx.services.hub.published


def install(registry):
    registry.add(event)
