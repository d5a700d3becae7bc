"""``VM_metrics``: the live state of a VM's domain, read from the backend when asked.

The VM record holds the stored next-start definition; this holds what runs now. Every field
but ``VM`` is computed from the backend, so it can never disagree with the hypervisor.

Nothing of it is stored but its ref, in the VM's ``metrics`` field (older versions stored the
objects: they are dropped at load). The model holds the metrics of a VM that has a domain
(:func:`follow`); those of a halted VM, half the objects of a large host, are made when asked
(:class:`OnDemand`) and answer the same, under the same ref.
"""

from __future__ import annotations

import datetime as dt
import time

from xend_ext import hosts
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, RO, Field, XenAPIClass
from xend_ext.model import Obj, new_uuid
from xend_ext.wire import NULL_REF, REF_PREFIX

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BOOT = time.time()  # objects loaded at start have not changed since


def _live(attr, empty):
    """A computed field: one attribute of the VM's domain, ``empty`` while the VM has none."""

    def compute(db, metrics):
        vm = db.find(metrics.values["VM"])
        # a VM running on another host of a pool: that host answers for it (xend_ext.forward)
        here = vm is not None and hosts.is_local(db, vm.values["resident_on"])
        domain = db.backend.domain(vm.uuid) if here else None
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
              volatile=True,  # measured on real hosts: it changes every window without a touch
              doc="share of one pCPU each vCPU gets: on the simulated host the scheduler model's, every vCPU "
                  "busy; on xl and libvirt's QEMU measured over the last window (10 s on xl, 2 s on "
                  "libvirt; README, backend tables)"),
        Field("start_time", T.DateTime, RO, compute=_live(lambda d: d.start_time, _EPOCH), doc="when it started"),
        Field("last_updated", T.DateTime, RO, compute=lambda db, m: dt.datetime.fromtimestamp(m.mts or _BOOT, dt.UTC),
              volatile=True,  # a halted VM's: when the VM last changed (made when asked, never touched)
              doc="when these metrics last changed (or the server started)"),
    ],
    default_role=POOL_ADMIN,
    persist=False,
    stored_before=True,
)


def _made(vm, ref):
    """The metrics object of ``vm``, under its ref: changed when the VM last changed."""
    obj = Obj(vm_metrics, ref, {"uuid": ref.removeprefix(REF_PREFIX), "VM": vm.ref})
    obj.ctime, obj.mtime, obj.mts = vm.ctime, vm.mtime, vm.mts
    return obj


class OnDemand:
    """The metrics of the VMs whose metrics the model does not hold, made when asked for: found
    through the index of ``VM.metrics``, listed by walking the VMs, counted from that index."""

    def find(self, db, ref):
        if ref == NULL_REF or not ref.startswith(REF_PREFIX):
            return None
        vms = db.find_by("VM", "metrics", ref)
        return _made(vms[0], ref) if vms else None

    def each(self, db):
        held = db.tables["VM_metrics"]
        for vm in db.tables["VM"].values():
            ref = vm.values["metrics"]
            if ref != NULL_REF:
                yield held.get(ref) or _made(vm, ref)

    def count(self, db):
        index = db.indexes[("VM", "metrics")]
        return len(index) - (NULL_REF in index)


vm_metrics.unheld = OnDemand()


def new(db, vm):
    """Give a new VM its metrics: a ref in ``VM.metrics``, announced as a new object."""
    ref = REF_PREFIX + new_uuid()
    db.set(vm, "metrics", ref)
    db.made(_made(vm, ref))


def follow(db, vm, live):
    """Hold the metrics of a VM with a domain (``live``: its live state changes and is announced),
    drop those of one without (made when asked from then on)."""
    ref = vm.values["metrics"]
    if ref == NULL_REF:
        return
    held = db.tables["VM_metrics"].get(ref)
    if live and held is None:
        db.hold(_made(vm, ref))
    elif not live and held is not None:
        db.release(held)


def install(registry):
    registry.add(vm_metrics)
