"""``system.*``: XML-RPC introspection, answered without the Xen-API envelope (as XAPI does)."""

from xend_ext import types as T
from xend_ext.datamodel import XenAPIClass

system = XenAPIClass("system", "XML-RPC introspection", [], events=False, persist=False, generic=False)


@system.message(result=T.Set(T.String), session=False, async_ok=False, raw_reply=True, name="listMethods")
def list_methods(ctx):
    """Every wire name the server answers to."""
    return ctx.registry.wire_names()


def install(registry):
    registry.add(system)
