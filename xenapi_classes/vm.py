"""``VM``: the stored next-start definition of a guest, and its lifecycle.

The record is the definition the next start applies (memory, vCPUs, scheduler parameters, pins);
``power_state``/``domid`` mirror the backend, and ``VM_metrics`` shows what runs now. Every
lifecycle message takes the VM's lock, checks the power state, asks the backend, and only then
records the outcome, so a failed backend step changes nothing here.
"""

from __future__ import annotations

import json
import logging
import os
import uuid as uuid_module
from pathlib import Path

from xenapi_classes import cpu_pool as pools
from xenapi_classes import host_cpu as host_cpus
from xenapi_classes import sched_domain as sdoms
from xenapi_classes import vm_metrics
from xend_ext import cpuset, forward, grouping, hosts, migration, placement
from xend_ext import types as T
from xend_ext.backends.base import Capability, Domain, DomainConfig, PowerState
from xend_ext.datamodel import (
    POOL_ADMIN,
    RO,
    RW,
    STATIC_RO,
    VM_OPERATOR,
    Field,
    XenAPIClass,
    coerce_record,
    generic_map_add,
    generic_map_remove,
    generic_set,
)
from xend_ext.wire import NULL_REF, REF_PREFIX, XenAPIError

log = logging.getLogger("xend_ext.vm")

MIB = 1 << 20
MAX_VCPUS = 128
DEFAULT_WEIGHT, DEFAULT_CAP = 256, 0
# Unknown: resident on a host of the pool that is not live (Xen-API 1.0 had it; XAPI dropped it)
POWER = T.Enum("vm_power_state", "Halted", "Running", "Paused", "Suspended", "Unknown")
LIVE_STATES = ("Running", "Paused")


def _definition(name, positive=True):
    """A definition field's check: the value itself, then (on a setter) the whole definition with it.
    A create record is checked whole by _on_create."""

    def check(ctx, obj, value):
        if positive and value < 1:
            raise XenAPIError("VALUE_NOT_SUPPORTED", name, value, "must be at least 1")
        if obj is not None:
            check_definition(ctx, {**obj.values, name: value})

    return check


def _unique_name(ctx, obj, value):
    if any(other is not obj for other in ctx.db.find_by("VM", "name_label", value)):
        raise XenAPIError("VALUE_NOT_SUPPORTED", "name_label", value, "another VM has this name")


def _check_uuid(ctx, obj, value):
    """xend kept a config's uuid; so do we, if it is a uuid and no other VM has it."""
    if value == "":
        return
    try:
        canonical = str(uuid_module.UUID(value))
    except ValueError:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "uuid", value, "not a uuid") from None
    if canonical != value:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "uuid", value, f"write it as {canonical}")
    if ("VM", value) in ctx.db.by_uuid_index:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "uuid", value, "another VM has this uuid")


def _check_pool_name(ctx, obj, value):
    """A VM of a scheduling domain keeps its master's pool: moving them is cpu_pool_migrate's job."""
    if obj is not None and value != obj.values["pool_name"] and sdoms.domain_of(ctx.db, obj.ref) is not None:
        raise XenAPIError("SCHED_DOMAIN_POOL_MISMATCH", obj.ref, obj.values["pool_name"])


vm = XenAPIClass(
    "VM",
    "A virtual machine: its stored definition and its lifecycle",
    [
        Field("uuid", T.String, STATIC_RO, default="", validate=_check_uuid,
              doc="unique identifier; a create record may give one (as xend kept a config's uuid)"),
        Field("name_label", T.String, RW, validate=_unique_name, doc="the VM's name (unique, xm uses it)"),
        Field("name_description", T.String, RW),
        Field("power_state", POWER, RO, default="Halted", doc="as the backend reports it"),
        Field("domid", T.Int, RO, default=-1, doc="the domain id, -1 when halted"),
        Field("is_control_domain", T.Bool, RO, doc="true for Domain-0"),
        Field("resident_on", T.Ref("host", nullable=True), RO, doc="the host it runs on, NULL when halted"),
        Field("affinity", T.Ref("host", nullable=True), RW, set_role=VM_OPERATOR,
              doc="in a pool, the host VM.start picks when it can run the VM there (XAPI's affinity)"),
        Field("pool_name", T.String, RW, default="Pool-0", set_role=VM_OPERATOR, validate=_check_pool_name,
              index=True, doc="the CPU pool it starts in"),
        Field("cpu_pool", T.Set(T.Ref("cpu_pool")), RO, compute=pools.vm_cpu_pool,
              doc="the pool its domain runs in (empty when halted)"),
        Field("order", T.Int, RW, doc="start order within its group (ascending)"),
        Field("start_delay", T.Int, RW, doc="seconds to wait after starting it in a group operation"),
        Field("shutdown_delay", T.Int, RW, doc="seconds to wait after stopping it in a group operation"),
        Field("depends_on", T.Set(T.Ref("VM")), RW, index=True,
              doc="VMs that must be running before this one starts"),
        Field("auto_power_on", T.Bool, RW, doc="start when the server starts"),
        Field("PV_kernel", T.String, RW, doc="path of the kernel on the host"),
        Field("PV_ramdisk", T.String, RW, doc="path of the initrd on the host"),
        Field("PV_args", T.String, RW, doc="kernel command line"),
        Field("memory_target", T.Int, RW, default=256 * MIB, validate=_definition("memory_target"),
              doc="bytes at next start"),
        Field("memory_static_max", T.Int, RW, default=256 * MIB, validate=_definition("memory_static_max"),
              doc="most bytes it may ever have"),
        Field("VCPUs_at_startup", T.Int, RW, default=1, validate=_definition("VCPUs_at_startup"),
              doc="vCPUs online at next start"),
        Field("VCPUs_max", T.Int, RW, default=1, validate=_definition("VCPUs_max"), doc="most vCPUs"),
        Field("VCPUs_params", T.Map(T.String, T.String), RW, validate=_definition("VCPUs_params", positive=False),
              doc="scheduler parameters at next start: weight, cap, cpumap<N>"),
        Field("actions_after_shutdown", T.Enum("on_normal_exit", "destroy", "restart"), RW,
              doc="what a guest-initiated power-off does (xm's on_poweroff)"),
        Field("actions_after_reboot", T.Enum("on_normal_exit_reboot", "restart", "destroy"), RW,
              doc="what a reboot from inside the guest does (xm's on_reboot)"),
        Field("actions_after_crash", T.Enum("on_crash_behaviour", "restart", "destroy", "preserve"), RW,
              doc="what a crash of the guest does (xm's on_crash)"),
        Field("metrics", T.Ref("VM_metrics", nullable=True), RO, index=True, doc="the live state"),
        Field("sched_domain", T.Ref("sched_domain", nullable=True), RO, compute=sdoms.vm_sched_domain,
              doc="the scheduling domain it is master or member of"),
        Field("groups", T.Set(T.Ref("VM_group")), RO, doc="the one VM_group it is in"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
    creatable=True,
    destroyable=True,
)


# -- the definition --------------------------------------------------------------------

def check_definition(ctx, values):
    """Cross-field rules of the stored definition: memory and vCPU bounds, VCPUs_params."""
    ncpus = len(ctx.backend.host_info().cpus)
    for name in ("memory_target", "memory_static_max", "VCPUs_at_startup", "VCPUs_max"):
        if values[name] < 1:
            raise XenAPIError("VALUE_NOT_SUPPORTED", name, values[name], "must be at least 1")
    if values["memory_target"] > values["memory_static_max"]:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "memory_target", values["memory_target"],
                          f"above memory_static_max ({values['memory_static_max']})")
    if values["VCPUs_max"] > MAX_VCPUS:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "VCPUs_max", values["VCPUs_max"], f"at most {MAX_VCPUS}")
    if values["VCPUs_at_startup"] > values["VCPUs_max"]:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "VCPUs_at_startup", values["VCPUs_at_startup"],
                          f"above VCPUs_max ({values['VCPUs_max']})")
    sched_params(values["VCPUs_params"], values["VCPUs_max"], ncpus)


def sched_params(params, vcpus_max, ncpus):
    """Weight, cap and pins from VCPUs_params, checked as xend's sched-credit and vcpu-pin did."""
    weight = _int_param(params, "weight", DEFAULT_WEIGHT)
    cap = _int_param(params, "cap", DEFAULT_CAP)
    if not 1 <= weight <= 65535:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "weight", weight, "weight is 1..65535")
    if not 0 <= cap <= 100 * vcpus_max:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "cap", cap, f"cap is 0..{100 * vcpus_max} for {vcpus_max} vCPUs")
    pins = {}
    for key, text in params.items():
        if key.startswith("cpumap"):
            index = key[len("cpumap"):]
            if not index.isdigit() or int(index) >= vcpus_max:
                raise XenAPIError("VALUE_NOT_SUPPORTED", key, text, f"no vCPU {index} (VCPUs_max is {vcpus_max})")
            try:
                pins[int(index)] = cpuset.parse(text, ncpus)
            except cpuset.CpuSetError as exc:
                raise XenAPIError("VALUE_NOT_SUPPORTED", key, text, str(exc)) from None
            if not pins[int(index)]:
                raise XenAPIError("VALUE_NOT_SUPPORTED", key, text, "pins a vCPU to no CPU at all")
    return weight, cap, pins


def _int_param(params, key, default):
    text = params.get(key, "")
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise XenAPIError("VALUE_NOT_SUPPORTED", key, text, "not an integer") from None


def domain_config(ctx, obj):
    """The backend's view of the stored definition."""
    return _config(ctx, obj.uuid, obj.ref, obj.values)


def _config(ctx, uuid, ref, v):
    """The backend's view of a definition (``ref`` empty: one not stored yet, e.g. an arriving VM)."""
    weight, cap, pins = sched_params(v["VCPUs_params"], v["VCPUs_max"], len(ctx.backend.host_info().cpus))
    pool = pools.pool_named(ctx, v["pool_name"])
    return DomainConfig(
        uuid=uuid, name=v["name_label"], memory=v["memory_target"], memory_max=v["memory_static_max"],
        vcpus=v["VCPUs_at_startup"], vcpus_max=v["VCPUs_max"], weight=weight, cap=cap, pins=pins,
        kernel=v["PV_kernel"], ramdisk=v["PV_ramdisk"], args=v["PV_args"],
        metadata=_membership(ctx, ref, v), pool=pool.uuid if pool is not None else "",
    )


def _membership(ctx, ref, values):
    """What the hypervisor may keep with the domain for us (libvirt's metadata): pool, group, and
    scheduling domain by name and uuid, so a look at the host alone tells where a domain belongs."""
    kept = {"pool_name": values["pool_name"]}
    group = next((ctx.db.find(g) for g in values.get("groups", ())), None)  # an arriving VM: none yet
    if group is not None:
        kept["group"] = group.values["name_label"]
    sd = sdoms.domain_of(ctx.db, ref)
    master = ctx.db.find(sd.values["master"]) if sd is not None else None
    if master is not None:
        kept["sched_domain_master"] = master.uuid
    return kept


def _on_create(ctx, values):
    check_definition(ctx, values)
    values["power_state"], values["domid"] = "Halted", -1


def _after_create(ctx, obj):
    vm_metrics.new(ctx.db, obj)
    grouping.place_new_vm(ctx.db, obj)


def _on_destroy(ctx, obj):
    if obj.values["is_control_domain"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Domain-0 cannot be destroyed")
    require_state(obj, "Halted")


@vm.message(("self", T.Ref("VM")), role=POOL_ADMIN, errors=("VM_BAD_POWER_STATE", "OPERATION_NOT_ALLOWED"))
async def destroy(ctx, ref):
    """Forget a halted VM (xm delete). Takes the VM's lock: a start in flight finishes first."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        _on_destroy(ctx, obj)
        await forget(ctx, obj, ctx.backend.undefine)


# -- live state --------------------------------------------------------------------------

def require_state(obj, *states):
    if obj.values["power_state"] not in states:
        raise XenAPIError("VM_BAD_POWER_STATE", obj.ref, states[0].lower(), obj.values["power_state"].lower())


def not_control_domain(obj, what):
    if obj.values["is_control_domain"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"Domain-0 cannot be {what}")


def apply_domain(ctx, obj, domain):
    """Record what the backend reports (None: no domain any more) and announce the live changes:
    this VM's, and those of the domains the backend says the action changed too."""
    host = hosts.this_host(ctx.db)
    had_domain = obj.values["power_state"] != "Halted"
    if domain is None:
        ctx.db.set(obj, "power_state", "Halted")
        ctx.db.set(obj, "domid", -1)
        ctx.db.set(obj, "resident_on", NULL_REF)
    else:
        ctx.db.set(obj, "power_state", domain.power_state)
        ctx.db.set(obj, "domid", domain.domid if domain.power_state != PowerState.SUSPENDED else -1)
        # a suspended VM is on no host alone (XAPI's way); in a pool its image is on this host, which resumes it
        here = domain.power_state != PowerState.SUSPENDED or hosts.in_pool(ctx.db)
        ctx.db.set(obj, "resident_on", host.ref if host and here else NULL_REF)
    if domain is not None or had_domain:  # a VM halted before and after has the same (empty) metrics
        vm_metrics.follow(ctx.db, obj, domain is not None)
        touch_metrics(ctx, obj)
    refresh_live(ctx, obj.uuid)
    hosts.publish(ctx)


def touch_metrics(ctx, obj):
    """Announce a change of the VM's live state (its VM_metrics are computed from the backend)."""
    placement.touch_metrics(ctx.db, obj)


refresh_live = placement.refresh_live


# -- lifecycle -------------------------------------------------------------------------

LIFECYCLE = dict(role=VM_OPERATOR, capability=Capability.LIFECYCLE)


@vm.message(("self", T.Ref("VM")), ("start_paused", T.Bool, False), ("force", T.Bool, False), **LIFECYCLE,
            errors=("VM_BAD_POWER_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY"))
async def start(ctx, ref, start_paused, force):
    """Start a halted VM from its stored definition (paused if asked). In a pool of hosts it starts
    on its ``affinity`` host if that can run it, else on the host with the most memory free whose
    CPU pool of its pool name is active (NO_HOSTS_AVAILABLE when none can)."""
    obj = ctx.current("VM", ref)
    require_state(obj, "Halted")
    await _start_on(ctx, ref, hosts.place(ctx.db, obj), start_paused, force)


@vm.message(("vm", T.Ref("VM")), ("host", T.Ref("host")), ("start_paused", T.Bool, False), ("force", T.Bool, False),
            **LIFECYCLE, errors=("VM_BAD_POWER_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY", "HOST_OFFLINE"))
async def start_on(ctx, ref, host, start_paused, force):
    """Start a halted VM on the given host of the pool (XAPI's start_on); that host's own checks
    decide, as for VM.start there."""
    await _start_on(ctx, ref, host, start_paused, force)


async def _start_on(ctx, ref, host, start_paused, force):
    if not hosts.is_local(ctx.db, host):  # started by that host, which answers for it
        await forward.call(ctx, host, "VM.start_on", [ref, host, start_paused, force])
        return
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        require_state(obj, "Halted")
        for hook in ctx.registry.before_start:
            hook(ctx, obj)
        await hosts.claim(ctx, obj)  # in a pool: no other host starts it meanwhile
        try:
            domain = await ctx.call_backend(ctx.backend.start, domain_config(ctx, obj), start_paused)
        except XenAPIError:
            hosts.unclaim(ctx, obj)
            raise
        apply_domain(ctx, obj, domain)


@vm.message(("self", T.Ref("VM")), role=VM_OPERATOR, capability=Capability.PAUSE, errors=("VM_BAD_POWER_STATE",))
async def pause(ctx, ref):
    """Stop scheduling a running VM."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        not_control_domain(obj, "paused")
        require_state(obj, "Running")
        apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.pause, obj.uuid))


@vm.message(("self", T.Ref("VM")), role=VM_OPERATOR, capability=Capability.PAUSE, errors=("VM_BAD_POWER_STATE",))
async def unpause(ctx, ref):
    """Schedule a paused VM again."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        require_state(obj, "Paused")
        apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.unpause, obj.uuid))


async def _shutdown(ctx, ref, clean):
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        not_control_domain(obj, "stopped")
        require_state(obj, *(("Running",) if clean else ("Running", "Paused", "Suspended")))
        await ctx.call_backend(ctx.backend.shutdown, obj.uuid, clean)
        apply_domain(ctx, obj, None)


@vm.message(("self", T.Ref("VM")), **LIFECYCLE, errors=("VM_BAD_POWER_STATE",))
async def clean_shutdown(ctx, ref):
    """Ask the guest to power off."""
    await _shutdown(ctx, ref, clean=True)


@vm.message(("self", T.Ref("VM")), **LIFECYCLE, errors=("VM_BAD_POWER_STATE",))
async def hard_shutdown(ctx, ref):
    """Stop the domain at once (xm destroy); a suspended VM loses its suspend image."""
    await _shutdown(ctx, ref, clean=False)


async def _reboot(ctx, ref, clean):
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        not_control_domain(obj, "rebooted")
        require_state(obj, *(("Running",) if clean else ("Running", "Paused")))
        for hook in ctx.registry.before_start:
            hook(ctx, obj)
        domain = await ctx.call_backend(ctx.backend.reboot, obj.uuid, clean, domain_config(ctx, obj))
        apply_domain(ctx, obj, domain)


@vm.message(("self", T.Ref("VM")), **LIFECYCLE, errors=("VM_BAD_POWER_STATE",))
async def clean_reboot(ctx, ref):
    """Restart the guest; the stored definition applies, as at every start."""
    await _reboot(ctx, ref, clean=True)


@vm.message(("self", T.Ref("VM")), **LIFECYCLE, errors=("VM_BAD_POWER_STATE",))
async def hard_reboot(ctx, ref):
    """Reset the domain and start it again from the stored definition."""
    await _reboot(ctx, ref, clean=False)


@vm.message(("self", T.Ref("VM")), role=VM_OPERATOR, capability=Capability.SUSPEND, errors=("VM_BAD_POWER_STATE",))
async def suspend(ctx, ref):
    """Save the domain to an image the host keeps; resume brings it back."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        not_control_domain(obj, "suspended")
        require_state(obj, "Running", "Paused")
        apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.suspend, obj.uuid))


@vm.message(("self", T.Ref("VM")), ("start_paused", T.Bool, False), ("force", T.Bool, False), role=VM_OPERATOR,
            capability=Capability.SUSPEND, errors=("VM_BAD_POWER_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY"))
async def resume(ctx, ref, start_paused, force):
    """Bring a suspended VM back."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        require_state(obj, "Suspended")
        apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.resume, obj.uuid, start_paused))


def record_for_image(ctx, obj):
    """The VM's definition as strings, to travel with a saved image or a migration."""
    skip = {"power_state", "domid", "resident_on", "affinity", "metrics", "depends_on", "is_control_domain", "groups"}
    record = {f.name: _text(f.type.encode(obj.values[f.name])) for f in vm.stored_fields() if f.name not in skip}
    # refs mean nothing on another server: dependencies travel as uuids
    record["depends_on_uuids"] = json.dumps([ctx.db.get(r).uuid for r in obj.values["depends_on"] if ctx.db.find(r)])
    return record


def resolve_dependencies(ctx, obj, meta):
    """Set depends_on from an image's uuids, for the VMs this server has (the others are dropped)."""
    try:
        uuids = json.loads(meta.get("depends_on_uuids", "[]"))
    except ValueError:
        return
    refs = [ctx.db.by_uuid_index[("VM", u)].ref for u in uuids if ("VM", u) in ctx.db.by_uuid_index]
    if refs and refs != obj.values["depends_on"]:
        ctx.db.set(obj, "depends_on", refs)


async def _read_back(ctx, obj):
    """In a pool, the VM's record as etcd has it now (another host changed it just before)."""
    refresh = getattr(ctx.services.store, "refresh", None)
    if refresh is not None:
        await refresh("VM", obj.ref)


def _text(encoded):
    return json.dumps(encoded) if isinstance(encoded, (dict, list)) else encoded


def record_from_image(meta):
    """Inverse of record_for_image: typed values for a create record."""
    out = {}
    for name, text in meta.items():
        f = vm.fields.get(name)
        if f is None:
            continue
        if isinstance(f.type, (T.MapType, T.SetType)):
            try:
                out[name] = json.loads(text)
            except ValueError:
                raise XenAPIError("VALUE_NOT_SUPPORTED", name, text[:100], "not a JSON map or list") from None
        else:
            out[name] = text
    return out


IMAGE_ERRORS = ("VM_BAD_POWER_STATE", "VALUE_NOT_SUPPORTED")


@vm.message(("self", T.Ref("VM")), ("path", T.String), ("overwrite", T.Bool, False), role=POOL_ADMIN,
            capability=Capability.SAVE, errors=IMAGE_ERRORS)
async def save(ctx, ref, path, overwrite):
    """Save a running or paused VM to a file in the server's image directory (``--image-dir``); the
    VM is halted afterwards. ``path`` is relative to the image directory, or absolute inside it;
    anything else (after ``..`` and symlinks are resolved) is ``VALUE_NOT_SUPPORTED [path, path,
    reason]``, as is an existing file unless ``overwrite`` is true."""
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        not_control_domain(obj, "saved")
        require_state(obj, "Running", "Paused")
        target = image_path(ctx, path)
        if not target.parent.is_dir():
            raise XenAPIError("VALUE_NOT_SUPPORTED", "path", path, "its directory does not exist on the host")
        if not overwrite and os.path.lexists(target):
            raise XenAPIError("VALUE_NOT_SUPPORTED", "path", path, EXISTS)
        meta = record_for_image(ctx, obj)
        meta["power_state"] = obj.values["power_state"]
        ctx.progress(0.1)
        await ctx.call_backend(ctx.backend.save, obj.uuid, target, meta)
        apply_domain(ctx, obj, None)


EXISTS = "a file of this name exists; pass overwrite=true to replace it"


def image_dir(ctx):
    """The directory server-side image files live in (``--image-dir``, default <state dir>/images)."""
    config = ctx.services.config
    folder = Path(config.image_dir or Path(config.state_dir) / "images")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "image_dir", str(folder), f"cannot make it: {exc.strerror}") from None
    return folder.resolve()


def image_path(ctx, path, what="path"):
    """``path`` (relative to the image directory, or absolute) resolved, symlinks and ``..``
    included; VALUE_NOT_SUPPORTED unless it lies inside the image directory."""
    root = image_dir(ctx)
    if not path or "\x00" in path:
        raise XenAPIError("VALUE_NOT_SUPPORTED", what, path, f"give a path in the image directory {root}")
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise XenAPIError("VALUE_NOT_SUPPORTED", what, path,
                          f"outside the image directory {root}; give a path inside it (a relative path is "
                          "taken from it)")
    return target


@vm.message(("path", T.String), ("start_paused", T.Bool, False), result=T.Ref("VM"), role=POOL_ADMIN,
            capability=Capability.SAVE, errors=(*IMAGE_ERRORS, "HOST_NOT_ENOUGH_FREE_MEMORY", "INVALID_VALUE"))
async def restore(ctx, path, start_paused):
    """Bring back a VM saved with VM.save (here or on another server); defines it if unknown.
    ``path`` is in the image directory, as for VM.save (VALUE_NOT_SUPPORTED otherwise); a damaged
    or foreign file is INVALID_VALUE."""
    source = image_path(ctx, path)
    if not source.is_file():
        raise XenAPIError("VALUE_NOT_SUPPORTED", "path", path, "no such file in the image directory")
    meta = await ctx.call_backend(ctx.backend.read_image, source)
    return await receive(ctx, meta, source, start_paused or meta.get("power_state") == "Paused")


def values_from_image(ctx, meta):
    """The checked create values of the VM an image carries (its uuid kept)."""
    record = record_from_image(meta)
    record.pop("uuid", None)
    values = coerce_record(ctx, vm, record)
    _on_create(ctx, values)
    values["uuid"] = meta.get("uuid", "")
    return values


def define_vm(ctx, values, meta):
    obj = ctx.db.create("VM", values)
    _after_create(ctx, obj)
    resolve_dependencies(ctx, obj, meta)
    return obj


async def receive(ctx, meta, image, paused, bring=None):
    """Find or define the VM an image belongs to, then restore its domain from the image (or have
    ``bring(config)`` give it: a domain that arrived by live migration, adopted). A VM unknown here
    is defined only once its domain runs, so a failed restore leaves nothing."""
    uuid = meta.get("uuid", "")
    known = ctx.db.by_uuid_index.get(("VM", uuid))
    if known is None:
        values_from_image(ctx, meta)  # refused now if it could not be defined
    async with ctx.lock(known.ref if known else REF_PREFIX + uuid):
        obj = ctx.db.by_uuid_index.get(("VM", uuid))  # again: it may have come or gone while we waited
        if known is not None and obj is not known:
            raise XenAPIError("HANDLE_INVALID", "VM", known.ref)
        if obj is not None:
            if hosts.is_local(ctx.db, obj.values["resident_on"]):  # (else: a VM of the pool arriving from its host)
                require_state(obj, "Halted")
            await _read_back(ctx, obj)
            config = domain_config(ctx, obj)
        else:  # restored as it will be defined here: in this server's pool of its pool's name
            config = _config(ctx, uuid, "", values_from_image(ctx, meta))
        placement.check_start(ctx.db, obj.values if obj else values_from_image(ctx, meta), obj.ref if obj else "")
        if bring is None:
            domain, _meta = await ctx.call_backend(ctx.backend.restore, image, paused, config)
        else:
            domain = await bring(config)
        if obj is None:  # a VM.create may have given that uuid meanwhile (it takes no lock)
            obj = ctx.db.by_uuid_index.get(("VM", uuid))
        if obj is None:
            try:  # checked again: a VM of that name may have been made while the domain came back
                obj = define_vm(ctx, values_from_image(ctx, meta), meta)
            except XenAPIError:
                if bring is None:  # (one brought live goes back to its source, which fetches it)
                    await ctx.call_backend(ctx.backend.shutdown, uuid, False)
                raise
        apply_domain(ctx, obj, domain)
        return obj.ref


# -- migration to another xend-ext server (xend_ext/migration.py) -----------------------

@vm.message(("self", T.Ref("VM")), ("destination_url", T.String), ("live", T.Bool, False), role=POOL_ADMIN,
            capability=Capability.MIGRATE,
            errors=("VM_BAD_POWER_STATE", "VM_MIGRATE_FAILED", "TASK_CANCELLED", "OPERATION_NOT_ALLOWED"))
async def migrate(ctx, ref, destination_url, live):
    """Hand a running VM to another xend-ext server; it runs there, and is gone from here. In a
    pool of hosts ``destination_url`` may be another host's ref: the VM moves there by the same
    streamed transfer and stays the same object of the pool (its record says where it runs).

    The destination checks it can take the VM (VM.migrate_check), then its image (exported while
    the domain runs on if the backend can and ``live``, else with the domain paused or saved)
    streams to the destination's ``/import``. Only once the destination runs it is the VM
    forgotten here; if the destination fails or the task is cancelled, it runs here as before.
    A VM of a scheduling domain travels only with its whole domain (VM_group.migrate).
    """
    remote = await migration.migrate(ctx, [ctx.current("VM", ref)], destination_url, live)
    await migration.logout(remote)


@vm.message(("records", T.Set(T.Map(T.String, T.String))), result=T.Map(T.String, T.String), role=POOL_ADMIN,
            capability=Capability.MIGRATE, async_ok=False,
            errors=("VM_BAD_POWER_STATE", "VALUE_NOT_SUPPORTED", "POOL_BAD_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY",
                    "NOT_IMPLEMENTED"))
def migrate_check(ctx, records):
    """The destination side of a migration, first step: can this server take all these VMs (their
    records as they travel) together? Nothing changes; the first problem is the error. The answer
    says how this host takes a running domain from another host's hypervisor (its backend's
    live_target: ``live_migration``, and for libvirt ``libvirt_migrate_uri``), {} if it takes none."""
    migration.check_arrivals(ctx, records)
    return ctx.backend.live_target()


@vm.message(("record", T.Map(T.String, T.String)), ("size", T.Int), ("start_paused", T.Bool, False),
            result=T.Ref("VM"), role=POOL_ADMIN, capability=Capability.MIGRATE,
            errors=("VM_BAD_POWER_STATE", "VALUE_NOT_SUPPORTED", "POOL_BAD_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY",
                    "OPERATION_NOT_ALLOWED"))
async def migrate_receive(ctx, record, size, start_paused):
    """The destination side of a migration, as Async.VM.migrate_receive: its task waits for the
    image (``size`` bytes) on ``PUT /import?session_id=..&task_id=..``, then runs the VM from it."""
    return await migration.receive(ctx, record, size, start_paused)


@vm.message(("record", T.Map(T.String, T.String)), ("start_paused", T.Bool, False), result=T.Ref("VM"),
            role=POOL_ADMIN, capability=Capability.MIGRATE,
            errors=("VM_BAD_POWER_STATE", "VALUE_NOT_SUPPORTED", "POOL_BAD_STATE", "HOST_NOT_ENOUGH_FREE_MEMORY",
                    "OPERATION_NOT_ALLOWED"))
async def migrate_receive_live(ctx, record, start_paused):
    """The destination side of a live migration by the hypervisors themselves (libvirt's peer to
    peer), as Async.VM.migrate_receive_live: the VM is checked, then the task waits while the
    source's hypervisor moves the domain here (to what VM.migrate_check answered) for the
    source's empty ``PUT /import?session_id=..&task_id=..``, and adopts the domain into the VM."""
    return await migration.receive_live(ctx, record, start_paused)


async def forget(ctx, obj, last=None):
    """The VM is gone from this server (destroyed or migrated away): nothing may still name it.
    Its scheduling domain and reservations let it go first, under their own locks as their
    messages do, and the backend is told; then ``last(uuid)`` runs (the backend forgets its
    definition); only then does the store forget the VM. If the backend refuses a step, the
    memberships are put back (and told again) and the VM stays."""
    if sdoms.domain_of(ctx.db, obj.ref) is None and not host_cpus.reserved_to(ctx, obj):
        if last is not None:
            await ctx.call_backend(last, obj.uuid)
        _drop(ctx, obj)
        return
    async with ctx.lock(sdoms.LOCK), ctx.lock(host_cpus.LOCK):
        undo_sd, undo_cpus = sdoms.forget_vm(ctx, obj), host_cpus.forget_vm(ctx, obj)
        try:
            await _tell(ctx, undo_sd, undo_cpus)
            if last is not None:
                await ctx.call_backend(last, obj.uuid)
        except XenAPIError:
            for undo in (undo_sd, undo_cpus):
                if undo is not None:
                    undo()
            await _tell(ctx, undo_sd, undo_cpus)  # the backend may have taken the new set already
            raise
        _drop(ctx, obj)


async def _tell(ctx, sched_domains, reservations):
    if sched_domains is not None:
        await sdoms.push(ctx)
    if reservations is not None:
        await host_cpus.push_occupancy(ctx)


def _drop(ctx, obj):
    metrics = ctx.db.find(obj.values["metrics"])
    if metrics is not None:
        ctx.db.destroy(metrics)
    for other in ctx.db.find_by("VM", "depends_on", obj.ref):
        ctx.db.set_remove(other, "depends_on", obj.ref)
    ctx.db.destroy(obj)


@vm.message(("self", T.Ref("VM")), ("pool", T.Ref("cpu_pool")), role=VM_OPERATOR,
            errors=("POOL_BAD_STATE", "OPERATION_NOT_ALLOWED", "VM_BAD_POWER_STATE", "SCHED_DOMAIN_POOL_MISMATCH",
                    "INSUFFICIENT_CPUS"))
async def cpu_pool_migrate(ctx, ref, pool):
    """Move a VM to another CPU pool: a running one moves live, a halted one starts there next."""
    await pools.move_vm(ctx, ref, pool, apply_domain)


@vm.message(("self", T.Ref("VM")), ("value", T.Set(T.Ref("VM_group"))), role=VM_OPERATOR,
            errors=("TOO_MANY_GROUPS", "OPERATION_NOT_ALLOWED"))
def set_groups(ctx, ref, value):
    """Join a group (XAPI's way of VM_group membership): at most one; [] means Null-Group."""
    grouping.set_groups(ctx.db, ref, value)


# A scheduling domain's master's VCPUs_params are the whole domain's: its setters tell the backend.

async def _params(ctx, ref, change):
    """Change VCPUs_params with ``change()``; a master's goes to the backend, or back if refused."""
    obj = ctx.current("VM", ref)
    before = dict(obj.values["VCPUs_params"])
    change()
    if sdoms.domain_of(ctx.db, ref) is not None:
        await sdoms.push_or_undo(ctx, lambda: ctx.db.find(ref) is obj and ctx.db.set(obj, "VCPUs_params", before))


@vm.message(("self", T.Ref("VM")), ("value", T.Map(T.String, T.String)), async_ok=False)
async def set_VCPUs_params(ctx, ref, value):  # noqa: N802 - the wire name
    """Scheduler parameters at next start: weight, cap, cpumap<N>."""
    await _params(ctx, ref, lambda: generic_set(ctx, vm, ref, vm.fields["VCPUs_params"], value))


@vm.message(("self", T.Ref("VM")), ("key", T.String), ("value", T.String), async_ok=False,
            errors=("MAP_DUPLICATE_KEY",))
async def add_to_VCPUs_params(ctx, ref, key, value):  # noqa: N802 - the wire name
    """Add one scheduler parameter to the definition."""
    await _params(ctx, ref, lambda: generic_map_add(ctx, vm, ref, vm.fields["VCPUs_params"], key, value))


@vm.message(("self", T.Ref("VM")), ("key", T.String), async_ok=False)
async def remove_from_VCPUs_params(ctx, ref, key):  # noqa: N802 - the wire name
    """Remove one scheduler parameter from the definition."""
    await _params(ctx, ref, lambda: generic_map_remove(ctx, vm, ref, vm.fields["VCPUs_params"], key))


# -- allocation changes: dynamic (running domain only), static (definition only), perm (both) --

MODE = T.Enum("allocation_mode", "dynamic", "static", "perm")


async def _allocate(ctx, ref, mode, stored, live, capability):
    """One allocation change in the three modes of API.md §8.

    ``stored(obj)``: the definition fields to write (static, perm), computed under the VM's lock
    so concurrent changes of one map do not overwrite each other; ``live``: a function of the
    VM's uuid calling the backend (dynamic, perm). A halted VM has no domain, so dynamic fails
    there and perm changes the definition only. The definition is checked before the backend.
    ``capability`` is what the backend needs for the live change: a backend without it still takes
    static changes (and perm on a halted VM), which only touch the definition.
    """
    async with ctx.lock(ref):
        obj = ctx.current("VM", ref)
        stored = stored(obj)
        running = obj.values["power_state"] in LIVE_STATES
        _needs(ctx, obj, mode, capability)  # again, under the lock: the VM may have started meanwhile
        if mode == "dynamic" and not running:
            raise XenAPIError("VM_BAD_POWER_STATE", ref, "running", obj.values["power_state"].lower())
        if mode != "dynamic":
            check_definition(ctx, {**obj.values, **stored})
        old = {name: obj.values[name] for name in stored}
        master = sdoms.domain_of(ctx.db, obj.ref) is not None  # a master's weight and cap cover its members
        if mode != "dynamic":
            await _redefine(ctx, obj, stored, old, master)
        domain = None
        if mode != "static" and running:
            try:
                domain = await ctx.call_backend(live, obj.uuid)
            except XenAPIError:
                if mode != "dynamic":  # perm: the definition goes back too, nothing half done
                    await _redefine(ctx, obj, old, stored, master)
                raise
            apply_domain(ctx, obj, domain)


async def _redefine(ctx, obj, values, previous, master):
    """Store definition ``values`` and tell the backend (its kept definition; the scheduling domains
    when the VM is in one). If it refuses, ``previous`` is stored and told again, then the error
    raised: the store and the backend keep agreeing."""
    try:
        await _define(ctx, obj, values, master)
    except XenAPIError:
        await _define(ctx, obj, previous, master)
        raise


async def _define(ctx, obj, values, master):
    for name, value in values.items():
        ctx.db.set(obj, name, value)
    await ctx.call_backend(ctx.backend.define, domain_config(ctx, obj))
    if master:
        await sdoms.push(ctx)


ALLOCATION = dict(role=VM_OPERATOR, errors=("VM_BAD_POWER_STATE", "VALUE_NOT_SUPPORTED", "NOT_IMPLEMENTED"))


def _needs(ctx, obj, mode, capability):
    """A live change needs the backend's capability (checked first, before the values); a static
    one, or perm on a halted VM, changes only the definition and needs nothing of the backend."""
    if mode == "dynamic" or (mode == "perm" and obj.values["power_state"] in LIVE_STATES):
        ctx.require(capability)


@vm.message(("self", T.Ref("VM")), ("value", T.Int), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def set_memory(ctx, ref, value, mode):
    """Memory in bytes (xm mem-set)."""
    _needs(ctx, ctx.current("VM", ref), mode, Capability.MEMORY_LIVE)
    _at_least_one("memory", value)

    def stored(obj):
        # a change the host could never give is refused now, not at the next start; a running
        # domain's own change is checked by the hypervisor (HOST_NOT_ENOUGH_FREE_MEMORY)
        host_memory = ctx.backend.host_info().memory_total
        if value > host_memory and (mode == "static" or obj.values["power_state"] not in LIVE_STATES):
            raise XenAPIError("VALUE_NOT_SUPPORTED", "memory", value, f"more than the host has ({host_memory})")
        return {"memory_target": value}

    await _allocate(ctx, ref, mode, stored, lambda uuid: ctx.backend.set_memory(uuid, value),
                    Capability.MEMORY_LIVE)


@vm.message(("self", T.Ref("VM")), ("value", T.Int), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def set_memory_max(ctx, ref, value, mode):
    """The most memory the domain may have, in bytes (xm mem-max)."""
    _needs(ctx, ctx.current("VM", ref), mode, Capability.MEMORY_MAX_LIVE)
    _at_least_one("memory_max", value)
    await _allocate(ctx, ref, mode, lambda obj: {"memory_static_max": value},
                    lambda uuid: ctx.backend.set_memory_max(uuid, value), Capability.MEMORY_MAX_LIVE)


@vm.message(("self", T.Ref("VM")), ("value", T.Int), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def set_VCPUs(ctx, ref, value, mode):  # noqa: N802 - the wire name
    """vCPUs online (xm vcpu-set)."""
    _needs(ctx, ctx.current("VM", ref), mode, Capability.VCPUS_LIVE)
    _at_least_one("VCPUs", value)
    await _allocate(ctx, ref, mode, lambda obj: {"VCPUs_at_startup": value},
                    lambda uuid: ctx.backend.set_vcpus(uuid, value), Capability.VCPUS_LIVE)


def _at_least_one(name, value):
    if value < 1:
        raise XenAPIError("VALUE_NOT_SUPPORTED", name, value, "must be at least 1")


def _live_sched(ctx, ref, weight=None, cap=None):
    def apply(uuid):
        domain = ctx.backend.domain(uuid)
        return ctx.backend.set_sched(uuid, domain.weight if weight is None else weight,
                                     domain.cap if cap is None else cap)
    return apply


@vm.message(("self", T.Ref("VM")), ("value", T.Int), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def set_sched_weight(ctx, ref, value, mode):
    """Credit scheduler weight, 1..65535 (xm sched-credit -w)."""
    _needs(ctx, ctx.current("VM", ref), mode, Capability.SCHED_CREDIT)
    if not 1 <= value <= 65535:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "weight", value, "weight is 1..65535")
    await _allocate(ctx, ref, mode, lambda obj: {"VCPUs_params": {**obj.values["VCPUs_params"], "weight": str(value)}},
                    _live_sched(ctx, ref, weight=value), Capability.SCHED_CREDIT)


@vm.message(("self", T.Ref("VM")), ("value", T.Int), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def set_sched_cap(ctx, ref, value, mode):
    """Credit scheduler cap in % of one pCPU, 0 (none)..100 x vCPUs (xm sched-credit -c)."""
    obj = ctx.current("VM", ref)
    _needs(ctx, obj, mode, Capability.SCHED_CREDIT)
    vcpus = obj.values["VCPUs_max"]
    if not 0 <= value <= 100 * vcpus:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "cap", value, f"cap is 0..{100 * vcpus} for {vcpus} vCPUs")
    await _allocate(ctx, ref, mode, lambda obj: {"VCPUs_params": {**obj.values["VCPUs_params"], "cap": str(value)}},
                    _live_sched(ctx, ref, cap=value), Capability.SCHED_CREDIT)


@vm.message(("self", T.Ref("VM")), ("vcpu", T.Int), ("cpus", T.String), ("mode", MODE, "dynamic"),
            **ALLOCATION)
async def pin_VCPU(ctx, ref, vcpu, cpus, mode):  # noqa: N802 - the wire name
    """Restrict a vCPU to some pCPUs: "2,3", "0-3,^1" or "all" (xm vcpu-pin)."""
    obj = ctx.current("VM", ref)
    _needs(ctx, obj, mode, Capability.PIN)
    if not 0 <= vcpu < obj.values["VCPUs_max"]:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "vcpu", vcpu, f"the VM has vCPUs 0..{obj.values['VCPUs_max'] - 1}")
    ncpus = len(ctx.backend.host_info().cpus)
    try:
        chosen = None if cpus.strip() == "all" else cpuset.parse(cpus, ncpus)
    except cpuset.CpuSetError as exc:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "cpus", cpus, str(exc)) from None
    if chosen is not None and not chosen:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "cpus", cpus, "pins the vCPU to no CPU at all")
    placement.check_pin(ctx.db, obj, vcpu, chosen, mode != "static")

    def stored(current_obj):
        params = dict(current_obj.values["VCPUs_params"])
        if chosen is None:
            params.pop(f"cpumap{vcpu}", None)
        else:
            params[f"cpumap{vcpu}"] = ",".join(str(c) for c in sorted(chosen))
        return {"VCPUs_params": params}

    await _allocate(ctx, ref, mode, stored, lambda uuid: ctx.backend.pin(uuid, vcpu, chosen), Capability.PIN)


@vm.message(("self", T.Ref("VM")), result=T.Struct, role="read-only", async_ok=False)
def get_cpu_policy(ctx, ref):
    """The runtime CPU policy (the policy manager's cpupolicy): stored and running pins, weight,
    cap, pool, the pCPUs reserved to this VM or kept from it, and its scheduling domain."""
    obj = ctx.db.get(ref)
    ncpus = len(ctx.backend.host_info().cpus)
    weight, cap, pins = sched_params(obj.values["VCPUs_params"], obj.values["VCPUs_max"], ncpus)
    stored = {"weight": weight, "cap": cap, "pool": obj.values["pool_name"] or "Pool-0",
              "pins": {str(v): cpuset.format(c) for v, c in sorted(pins.items())}}
    domain = ctx.backend.domain(obj.uuid) if obj.values["power_state"] in LIVE_STATES else None
    running = {}
    if domain is not None:
        pool = ctx.db.by_uuid_index.get(("cpu_pool", domain.pool))
        running = {"weight": domain.weight, "cap": domain.cap,
                   "pool": pool.values["name_label"] if pool else "",
                   "pins": {str(v): cpuset.format(c) for v, c in sorted(domain.pins.items())},
                   "utilisation": {str(v): u for v, u in sorted(domain.utilisation.items())}}
    mine = sorted(c.values["number"] for c in host_cpus.reserved_to(ctx, obj))
    sd = sdoms.domain_of(ctx.db, ref)
    return {"stored": stored, "running": running, "occupied_cpus": [str(n) for n in mine],
            "excluded_cpus": [str(n) for n in placement.excluded_cpus(ctx.db, obj)],
            "sched_domain": sd.ref if sd is not None else NULL_REF}


# -- start-up ------------------------------------------------------------------------------

def reconcile(ctx):
    """Make the store agree with the domains the hypervisor has (a toolstack restart)."""
    domains = {d.uuid: d for d in ctx.backend.domains()}
    for obj in list(ctx.db.all("VM")):
        if obj.values["metrics"] == NULL_REF:
            _after_create(ctx, obj)
        if obj.uuid in domains or hosts.is_local(ctx.db, obj.values["resident_on"]):  # another host's: not ours
            apply_domain(ctx, obj, domains.pop(obj.uuid, None))
    for domain in domains.values():  # discovered: running here, unknown to the store
        _discover(ctx, domain)
    known = {o.uuid for o in ctx.db.all("VM")}
    for config in ctx.backend.definitions():  # halted domains the hypervisor keeps a definition of
        if config.uuid not in known:
            _discover(ctx, config)


def _discover(ctx, found):
    """A VM for a domain (or a kept definition) the store did not know."""
    live = isinstance(found, Domain)
    values = {
        "uuid": found.uuid, "name_label": found.name,
        "is_control_domain": live and found.is_control_domain,
        "memory_target": found.memory, "memory_static_max": found.memory_max,
        "VCPUs_at_startup": found.vcpus, "VCPUs_max": found.vcpus_max,
        "VCPUs_params": {"weight": str(found.weight), "cap": str(found.cap),
                         **{f"cpumap{v}": cpuset.format(cpus) for v, cpus in found.pins.items()}},
        "pool_name": found.metadata.get("pool_name", "Pool-0"),
        "PV_kernel": found.kernel if not live else "", "PV_ramdisk": found.ramdisk if not live else "",
        "PV_args": found.args if not live else "",
    }
    if ctx.db.find_by("VM", "name_label", found.name):
        values["name_label"] = f"{found.name}-{found.uuid[:8]}"  # names are unique here, not always there
    obj = ctx.db.create("VM", values)
    _after_create(ctx, obj)
    apply_domain(ctx, obj, found if live else None)
    return obj


async def outside_change(ctx, kind, uuid):
    """A domain changed behind our back (virsh, xl, a guest that shut itself down): record what runs."""
    if kind != "domain":
        return
    obj = ctx.db.by_uuid_index.get(("VM", uuid))
    if obj is None:
        async with migration.arrival_lock(ctx, uuid):  # one migrating in live is its receive's to adopt
            obj = ctx.db.by_uuid_index.get(("VM", uuid))
            if obj is None:
                domain = await ctx.call_backend(ctx.backend.domain, uuid)
                if domain is not None and ctx.db.by_uuid_index.get(("VM", uuid)) is None:
                    _discover(ctx, domain)
                return
    async with ctx.lock(obj.ref):  # after any operation of ours in flight, which knows best
        if ctx.db.find(obj.ref) is None or not hosts.is_local(ctx.db, obj.values["resident_on"]):
            return  # gone, or it runs on another host of the pool now (it left here)
        apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.domain, uuid))


async def auto_start(ctx):
    """At every server start, as xend did: halted VMs with auto_power_on start, in ``order``
    (alone; in a pool a host's start leaves the others' VMs alone)."""
    if hosts.in_pool(ctx.db):
        return
    waiting = sorted((o for o in ctx.db.all("VM") if o.values["auto_power_on"] and o.values["power_state"] == "Halted"),
                     key=lambda o: (o.values["order"], o.values["name_label"]))
    for obj in waiting:
        try:
            await start(ctx, obj.ref, False, False)
        except XenAPIError as exc:
            log.warning("auto_power_on: %s did not start: %s", obj.values["name_label"], exc)


def install(registry):
    vm.on_create = _on_create
    vm.after_create = _after_create
    registry.add(vm)
    registry.on_start.append(reconcile)
    registry.on_start.append(auto_start)
    registry.on_backend_change.append(outside_change)
