"""``sched_domain``: VMs sharing one master VM's timeslices (seed 001, the "nemesis" patch).

The master's weight and cap apply to the master and its members together, as one scheduling
entity: a stub domain's work counts against its guest's cap. All of a domain's VMs are in the
master's CPU pool. The backend is told the whole set of scheduling domains whenever it changes
(and at every start), so what runs always matches what is stored.
"""

from __future__ import annotations

from xend_ext import placement
from xend_ext import types as T
from xend_ext.backends.base import Capability, SchedDomain
from xend_ext.datamodel import POOL_ADMIN, RO, RW, VM_OPERATOR, Field, XenAPIClass
from xend_ext.wire import NULL_REF, XenAPIError

sched_domain = XenAPIClass(
    "sched_domain",
    "Several VMs sharing one master VM's timeslices: the master's weight and cap cover them all",
    [
        Field("name_label", T.String, RW),
        Field("name_description", T.String, RW),
        Field("master", T.Ref("VM"), RO, index=True, doc="the VM whose weight and cap the domain has"),
        Field("members", T.Set(T.Ref("VM")), RO, index=True, doc="the other VMs (the master excluded)"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
    creatable=True,
    destroyable=True,
)


def domain_of(db, vm_ref):
    """The scheduling domain a VM is master or member of, or None."""
    found = db.find_by("sched_domain", "master", vm_ref) or db.find_by("sched_domain", "members", vm_ref)
    return found[0] if found else None


def vm_sched_domain(db, vm):
    """VM.sched_domain: the domain it is master or member of, NULL if none."""
    sd = domain_of(db, vm.ref)
    return sd.ref if sd is not None else NULL_REF


def _free(ctx, vm):
    sd = domain_of(ctx.db, vm.ref)
    if sd is not None:
        raise XenAPIError("VM_ALREADY_IN_SCHED_DOMAIN", vm.ref, sd.ref)
    if vm.values["is_control_domain"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Domain-0 cannot be in a scheduling domain")


def _pool_of(vm):
    return vm.values["pool_name"] or "Pool-0"


async def push(ctx, joined=()):
    """Tell the backend the whole set of scheduling domains, then announce the changed shares and
    the VMs that ``joined`` a domain (their sched_domain changed). One push at a time, each
    computing the set once the previous one is done: the last set the backend gets is the store's."""
    async with ctx.lock(PUSH_LOCK):
        domains = []
        for sd in ctx.db.all("sched_domain"):
            master = ctx.db.get(sd.values["master"])
            params = master.values["VCPUs_params"]
            domains.append(SchedDomain(
                master=master.uuid, members=frozenset(ctx.db.get(m).uuid for m in sd.values["members"]),
                weight=int(params.get("weight") or 256), cap=int(params.get("cap") or 0)))
        await ctx.call_backend(ctx.backend.set_sched_domains, domains)
    _touch(ctx, joined)
    placement.refresh_live(ctx)


async def push_or_undo(ctx, undo, joined=()):
    """Push a change of the store; if the backend refuses it (it keeps the set it had), ``undo()``
    puts the store back, so the two never disagree."""
    try:
        await push(ctx, joined)
    except XenAPIError:
        undo()
        raise


PUSH_LOCK = "sched_domain/push"
LOCK = "sched_domain/*"  # membership rules span domains: one change at a time


@sched_domain.message(("args", T.Struct), result=T.Ref("sched_domain"), role=POOL_ADMIN,
                      capability=Capability.SCHED_DOMAIN,
                      errors=("VM_ALREADY_IN_SCHED_DOMAIN", "SCHED_DOMAIN_POOL_MISMATCH", "OPERATION_NOT_ALLOWED"))
async def create(ctx, record):
    """A new scheduling domain; the record names its ``master`` (and may give ``members``)."""
    if not isinstance(record, dict) or "master" not in record:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "master", "", "the record must name the master VM")
    async with ctx.lock(LOCK):
        master = ctx.db.lookup("VM", str(record["master"]))
        _free(ctx, master)
        members = [ctx.db.lookup("VM", str(m)) for m in record.get("members", []) or []]
        for vm in members:
            if vm is master:
                raise XenAPIError("VALUE_NOT_SUPPORTED", "members", vm.ref, "the master is not one of its members")
            _free(ctx, vm)
            placement.check_same_pool(ctx.db, vm, master)
        values = {"name_label": str(record.get("name_label") or master.values["name_label"]),
                  "name_description": str(record.get("name_description", "")),
                  "other_config": {str(k): str(v) for k, v in (record.get("other_config") or {}).items()},
                  "master": master.ref, "members": list(dict.fromkeys(vm.ref for vm in members))}
        obj = ctx.db.create("sched_domain", values)
        await push_or_undo(ctx, lambda: _destroy(ctx, obj), [values["master"], *values["members"]])
        return obj.ref


@sched_domain.message(("self", T.Ref("sched_domain")), role=POOL_ADMIN, capability=Capability.SCHED_DOMAIN)
async def destroy(ctx, ref):
    """Dissolve the domain: its members are scheduled on their own again."""
    async with ctx.lock(LOCK):
        sd = ctx.current("sched_domain", ref)
        _destroy(ctx, sd)
        await push_or_undo(ctx, lambda: _again(ctx, sd))


@sched_domain.message(("self", T.Ref("sched_domain")), ("vm", T.Ref("VM")), role=VM_OPERATOR,
                      capability=Capability.SCHED_DOMAIN,
                      errors=("VM_ALREADY_IN_SCHED_DOMAIN", "SCHED_DOMAIN_POOL_MISMATCH"))
async def add_member(ctx, ref, vm_ref):
    """Make a VM share the master's timeslices (it must be in the master's CPU pool)."""
    async with ctx.lock(LOCK):
        sd = ctx.current("sched_domain", ref)
        vm = ctx.current("VM", vm_ref)  # either may have gone while we waited for the lock
        _free(ctx, vm)
        master = ctx.current("VM", sd.values["master"])
        placement.check_same_pool(ctx.db, vm, master)
        before = list(sd.values["members"])
        ctx.db.set(sd, "members", [*before, vm.ref])
        await push_or_undo(ctx, lambda: _members(ctx, sd, before), [vm.ref])


@sched_domain.message(("self", T.Ref("sched_domain")), ("vm", T.Ref("VM")), role=VM_OPERATOR,
                      capability=Capability.SCHED_DOMAIN)
async def remove_member(ctx, ref, vm_ref):
    """Schedule a member on its own again."""
    async with ctx.lock(LOCK):
        sd = ctx.current("sched_domain", ref)
        ctx.current("VM", vm_ref)
        if vm_ref not in sd.values["members"]:
            raise XenAPIError("VALUE_NOT_SUPPORTED", "vm", vm_ref, "not a member of this scheduling domain")
        before = list(sd.values["members"])
        ctx.db.set(sd, "members", [m for m in before if m != vm_ref])
        _touch(ctx, [vm_ref])
        await push_or_undo(ctx, lambda: _members(ctx, sd, before))


def _destroy(ctx, sd):
    if ctx.db.find(sd.ref) is sd:
        ctx.db.destroy(sd)
        _touch(ctx, [sd.values["master"], *sd.values["members"]])


def _again(ctx, sd):
    """Undo _destroy: the same domain (ref and uuid) back in the store."""
    again = ctx.db.create("sched_domain", dict(sd.values), ref=sd.ref)
    _touch(ctx, [again.values["master"], *again.values["members"]])


def _members(ctx, sd, members):
    if ctx.db.find(sd.ref) is sd:
        ctx.db.set(sd, "members", members)
        _touch(ctx, members)


def _touch(ctx, vm_refs):
    """VMs leaving a domain: their VM.sched_domain changed."""
    for ref in vm_refs:
        vm = ctx.db.find(ref)
        if vm is not None:
            ctx.db.touch(vm)


def pool_change_allowed(ctx, vm, pool_name):
    """A member cannot leave the master's pool alone; the master takes its members along
    (checked by the caller for every member). Returns the members that must move with it."""
    sd = domain_of(ctx.db, vm.ref)
    if sd is None:
        return []
    if sd.values["master"] != vm.ref:
        raise XenAPIError("SCHED_DOMAIN_POOL_MISMATCH", vm.ref, _pool_of(ctx.db.get(sd.values["master"])))
    return [ctx.db.get(m) for m in sd.values["members"]]


def forget_vm(ctx, vm):
    """A VM going away leaves its domain; a master dissolves it (members are released). Returns
    what puts it back (None when the VM was in no domain)."""
    sd = domain_of(ctx.db, vm.ref)
    if sd is None:
        return None
    if sd.values["master"] == vm.ref:
        _destroy(ctx, sd)
        return lambda: _again(ctx, sd)
    before = list(sd.values["members"])
    ctx.db.set(sd, "members", [m for m in before if m != vm.ref])
    return lambda: _members(ctx, sd, before)


async def reconcile(ctx):
    """At start the backend learns the stored scheduling domains (a host reboot forgot them)."""
    if Capability.SCHED_DOMAIN in ctx.backend.capabilities:
        await push(ctx)


def install(registry):
    registry.add(sched_domain)
    registry.on_start.append(reconcile)
