"""``pool``: the (single-host) resource pool, as XAPI clients expect to find one.

The official client asks ``pool.get_all``/``pool.get_master`` for ``Session.API_version``, and
consoles read the pool first. Not to be confused with ``cpu_pool``.
"""

from __future__ import annotations

from xend_ext import hosts
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, RO, RW, Field, XenAPIClass

pool = XenAPIClass(
    "pool",
    "The pool of hosts this server manages (one host)",
    [
        Field("name_label", T.String, RW),
        Field("name_description", T.String, RW),
        Field("master", T.Ref("host"), RO, doc="the host this server runs on"),
        Field("other_config", T.Map(T.String, T.String), RW),
        Field("ha_enabled", T.Bool, RW,
              doc="in a pool of hosts on etcd: when a host is no longer live, its running auto_power_on "
                  "VMs are restarted on another live host, once (xend_ext.cluster.ha); off: they are shown "
                  "with power_state Unknown until their host returns"),
    ],
    default_role=POOL_ADMIN,
)


def reconcile(ctx):
    host = hosts.this_host(ctx.db)
    pools = list(ctx.db.all("pool"))
    if not pools:
        ctx.db.create("pool", {"name_label": "", "master": host.ref})
    elif not hosts.in_pool(ctx.db) or ctx.db.find(pools[0].values["master"]) is None:
        ctx.db.set(pools[0], "master", host.ref)  # in a pool of hosts, the first host stays its master


def install(registry):
    registry.add(pool)
    registry.on_start.append(reconcile)
