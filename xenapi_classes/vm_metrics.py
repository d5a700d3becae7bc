"""``VM_metrics``: the live state of a VM's domain, read from the backend when asked.

The VM record holds the stored next-start definition; this holds what runs now. Every field
but ``VM`` is computed from the backend, so it can never disagree with the hypervisor.
"""

from __future__ import annotations

import datetime as dt
import time

from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, RO, Field, XenAPIClass

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BOOT = time.time()  # objects loaded at start have not changed since


def _live(attr, empty):
    """A computed field: one attribute of the VM's domain, ``empty`` while the VM has none."""

    def compute(db, metrics):
        vm = db.find(metrics.values["VM"])
        domain = db.backend.domain(vm.uuid) if vm is not None else None
        return attr(domain) if domain is not None else (empty() if callable(empty) else empty)

    return compute


vm_metrics = XenAPIClass(
    "VM_metrics",
    "The live state of a VM's domain",
    [
        Field("VM", T.Ref("VM"), RO, doc="the VM these metrics describe"),
        Field("memory_actual", T.Int, RO, compute=_live(lambda d: d.memory, 0), doc="bytes the domain has now"),
        Field("memory_max", T.Int, RO, compute=_live(lambda d: d.memory_max, 0),
              doc="the most bytes the domain may have now (xm mem-max --dynamic changes it)"),
        Field("VCPUs_number", T.Int, RO, compute=_live(lambda d: d.vcpus, 0), doc="vCPUs online now"),
        Field("VCPUs_params", T.Map(T.String, T.String), RO,
              compute=_live(lambda d: {"weight": str(d.weight), "cap": str(d.cap),
                                       **{f"cpumap{v}": ",".join(map(str, sorted(c))) for v, c in d.pins.items()}},
                            dict),
              doc="the scheduler parameters in force: weight, cap, cpumap<N>"),
        Field("VCPUs_CPU", T.Map(T.Int, T.Int), RO, compute=_live(lambda d: dict(d.vcpu_cpu), dict),
              doc="the pCPU each vCPU runs on"),
        Field("VCPUs_utilisation", T.Map(T.Int, T.Float), RO,
              compute=_live(lambda d: dict(d.utilisation), dict),
              doc="share of one pCPU each vCPU gets when every vCPU is busy (the scheduler model)"),
        Field("start_time", T.DateTime, RO, compute=_live(lambda d: d.start_time, _EPOCH), doc="when it started"),
        Field("last_updated", T.DateTime, RO, compute=lambda db, m: dt.datetime.fromtimestamp(m.mts or _BOOT, dt.UTC),
              doc="when these metrics last changed (or the server started)"),
    ],
    default_role=POOL_ADMIN,
)


def install(registry):
    registry.add(vm_metrics)
