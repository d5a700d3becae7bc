"""``VM_group``: named groups of VMs and ordered group operations (seed 004, XAPI's VM_group and
VM_appliance).

A VM is in exactly one group: ``Group-0`` holds the control domain, ``Null-Group`` every VM not
put elsewhere. A group operation runs its members' operations in ``VM.order`` batches (ascending
to start, descending to stop), the members of one batch concurrently, each waiting for the VMs
it ``depends_on``; ``start_delay``/``shutdown_delay`` are waited after a member's step. When a
member fails the operation stops, the members already changed are rolled back where the step has
an inverse, and the call fails with ``OPERATION_PARTIALLY_FAILED`` while the task's ``result``
lists every member's outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid as uuid_module

from xenapi_classes import vm as vm_module
from xend_ext import forward, grouping, hosts, sxp
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, RO, RW, STATIC_RO, VM_OPERATOR, Field, XenAPIClass
from xend_ext.wire import XenAPIError, dump_value

log = logging.getLogger("xend_ext.vm_group")

GROUP0, NULL_GROUP, DEFAULTS = grouping.GROUP0, grouping.NULL_GROUP, grouping.DEFAULTS
MANIFEST = "group.sxp"
DEPENDENCY_WAIT = 600.0  # seconds a member waits for the VMs it depends on


def _unique_name(ctx, obj, value):
    if not value:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "name_label", value, "a group needs a name")
    if any(other is not obj for other in ctx.db.find_by("VM_group", "name_label", value)):
        raise XenAPIError("VALUE_NOT_SUPPORTED", "name_label", value, "another group has this name")
    if obj is not None and obj.values["name_label"] in DEFAULTS and value != obj.values["name_label"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"{obj.values['name_label']} cannot be renamed")


vm_group = XenAPIClass(
    "VM_group",
    "A named group of VMs, operated on as one",
    [
        Field("group_id", T.Int, RO, index=True, doc="0 for Group-0, 1 for Null-Group, then one more per group"),
        Field("name_label", T.String, RW, validate=_unique_name, doc="unique"),
        Field("name_description", T.String, RW),
        Field("VMs", T.Set(T.Ref("VM")), RO, reverse=("VM", "groups"), doc="the members"),
        Field("placement", T.Enum("placement_policy", "normal", "anti_affinity"), STATIC_RO,
              doc="anti_affinity: in a pool of hosts, the group's start puts each member on a host of its own "
                  "(alone, one host: nothing to spread)"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
    creatable=True,
    destroyable=True,
)


def named(ctx, name):
    return grouping.named(ctx.db, name)


def join(ctx, vm, group):
    """Put a VM in a group (out of its current one): see xend_ext.grouping."""
    grouping.join(ctx.db, vm, group)


def _next_id(ctx):
    return max(1, ctx.db.highest("VM_group", "group_id", 1)) + 1


def _on_create(ctx, values):
    values["group_id"] = _next_id(ctx)


@vm_group.message(("args", T.Struct), result=T.Ref("VM_group"), role=POOL_ADMIN,
                  errors=("VALUE_NOT_SUPPORTED", "OPERATION_NOT_ALLOWED"))
def create(ctx, record):
    """A new group; ``VMs`` in the record (refs, uuids or names) join it at once."""
    from xend_ext.datamodel import coerce_record

    if not isinstance(record, dict):
        raise XenAPIError("FIELD_TYPE_ERROR", "args")
    record = dict(record)
    members = record.pop("VMs", []) or []
    if not isinstance(members, list):
        raise XenAPIError("FIELD_TYPE_ERROR", "VMs")
    vms = [_vm(ctx, m) for m in members]
    values = coerce_record(ctx, vm_group, record)
    _on_create(ctx, values)
    for vm in vms:
        join_check(vm)
    group = ctx.db.create("VM_group", values)
    for vm in vms:
        join(ctx, vm, group)
    return group.ref


def join_check(vm):
    if vm.values["is_control_domain"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Domain-0 stays in Group-0")


def _vm(ctx, text):
    text = str(text)
    found = ctx.db.find(text) or ctx.db.by_uuid_index.get(("VM", text))
    if found is None or found.cls.name != "VM":
        found = next(iter(ctx.db.find_by("VM", "name_label", text)), None)
    if found is None:
        raise XenAPIError("HANDLE_INVALID", "VM", text)
    return found


@vm_group.message(("self", T.Ref("VM_group")), role=POOL_ADMIN, errors=("OPERATION_NOT_ALLOWED",))
def destroy(ctx, ref):
    """Remove a group; its members go to Null-Group."""
    group = ctx.db.get(ref)
    if group.values["name_label"] in DEFAULTS:
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"{group.values['name_label']} cannot be destroyed")
    null = named(ctx, NULL_GROUP)
    for vm_ref in ctx.db.field_value(group, "VMs"):
        ctx.db.set(ctx.db.get(vm_ref), "groups", [null.ref])
    ctx.db.destroy(group)


@vm_group.message(("self", T.Ref("VM_group")), ("vm", T.Ref("VM")), role=VM_OPERATOR,
                  errors=("OPERATION_NOT_ALLOWED",))
def add_VM(ctx, ref, vm_ref):  # noqa: N802 - the wire name
    """grp-join: the VM leaves its current group for this one."""
    join(ctx, ctx.db.get(vm_ref), ctx.db.get(ref))


@vm_group.message(("self", T.Ref("VM_group")), ("vm", T.Ref("VM")), role=VM_OPERATOR,
                  errors=("OPERATION_NOT_ALLOWED", "VALUE_NOT_SUPPORTED"))
def remove_VM(ctx, ref, vm_ref):  # noqa: N802 - the wire name
    """The VM goes back to Null-Group."""
    vm = ctx.db.get(vm_ref)
    if ref not in vm.values["groups"]:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "vm", vm_ref, "not a member of this group")
    group = ctx.db.get(ref)
    if group.values["name_label"] == NULL_GROUP:
        return
    join(ctx, vm, named(ctx, NULL_GROUP))


# -- group operations ---------------------------------------------------------------------------

# members already where an operation would take them are skipped, not failed
SKIP = {
    "start": ("Running", "Paused"), "clean_shutdown": ("Halted",), "hard_shutdown": ("Halted",),
    "pause": ("Paused",), "unpause": ("Running",), "suspend": ("Suspended",), "resume": ("Running", "Paused"),
    "save": ("Halted", "Suspended"), "migrate": ("Halted", "Suspended"),
    "clean_reboot": ("Halted", "Suspended"), "hard_reboot": ("Halted", "Suspended"),
    "restore": ("Running", "Paused"),
}

# operation -> (VM message, direction, inverse VM message or None, delay field)
OPERATIONS = {
    "start": ("start", "up", "hard_shutdown", "start_delay"),
    "clean_shutdown": ("clean_shutdown", "down", "start", "shutdown_delay"),
    "hard_shutdown": ("hard_shutdown", "down", "start", "shutdown_delay"),
    "clean_reboot": ("clean_reboot", "up", None, "start_delay"),
    "hard_reboot": ("hard_reboot", "up", None, "start_delay"),
    "pause": ("pause", "down", "unpause", "shutdown_delay"),
    "unpause": ("unpause", "up", "pause", "start_delay"),
    "suspend": ("suspend", "down", "resume", "shutdown_delay"),
    "resume": ("resume", "up", "suspend", "start_delay"),
    "save": ("save", "down", None, "shutdown_delay"),
    "migrate": ("migrate", "up", "migrate", "start_delay"),  # undone by migrating back
    "restore": ("restore", "up", "hard_shutdown", "start_delay"),
}


def batches(ctx, members, direction):
    """Members grouped by ``order`` (a VM placed after the VMs it depends on), ascending to start,
    descending to stop; a dependency cycle is an error."""
    refs = {m.ref for m in members}
    level = {}

    def depth(vm, path=()):
        if vm.ref in path:
            raise XenAPIError("OPERATION_NOT_ALLOWED", "the members' depends_on form a cycle")
        if vm.ref not in level:
            after = [depth(ctx.db.get(d), (*path, vm.ref)) + 1
                     for d in vm.values["depends_on"] if d in refs]
            level[vm.ref] = max([vm.values["order"], *after])
        return level[vm.ref]

    for vm in members:
        depth(vm)
    keys = sorted(set(level.values()), reverse=direction == "down")
    return [[m for m in sorted(members, key=lambda m: m.values["name_label"]) if level[m.ref] == k] for k in keys]


async def _wait_for_dependencies(ctx, vm, done, paused, changed=()):
    """Before a member starts, every VM it depends on must be running (or, in an operation that
    starts everything paused, be up and paused); a member this operation brought up counts as up
    (a migrated one runs on the destination)."""
    satisfied = ("Running", "Paused") if paused else ("Running",)
    for dep_ref in vm.values["depends_on"]:
        dep = ctx.db.find(dep_ref)
        if dep is None:
            continue
        if dep_ref in done:
            await done[dep_ref].wait()
            dep = ctx.db.find(dep_ref)
            if dep is None or any(c.ref == dep_ref for c in changed):
                continue
        if dep.values["power_state"] not in satisfied:
            raise XenAPIError("OPERATION_NOT_ALLOWED",
                              f"{vm.values['name_label']} depends on {dep.values['name_label']}, which is not running")


async def run_group(ctx, group, operation, step, inverse_step=None, paused=False):
    """Run ``step(vm)`` over the group's members in order; see the module docstring. One group
    operation at a time per group."""
    async with ctx.lock(group.ref):
        group = ctx.current("VM_group", group.ref)  # it may have been destroyed while we waited
        return await _run_group(ctx, group, operation, step, inverse_step, paused)


async def _run_group(ctx, group, operation, step, inverse_step, paused):
    message, direction, inverse, delay_field = OPERATIONS[operation]
    members = [ctx.db.get(r) for r in ctx.db.field_value(group, "VMs")]
    members = [m for m in members if not m.values["is_control_domain"]]
    order = batches(ctx, members, direction)
    outcome = {m.ref: "not run" for m in members}
    changed = []
    failed = []
    done = {m.ref: asyncio.Event() for m in members}
    total = max(1, len(members))

    async def one(vm):
        try:
            state = vm.values["power_state"]
            if state in SKIP[operation]:
                outcome[vm.ref] = f"skipped: already {state.lower()}"
                return
            if direction == "up":
                await _wait_for_dependencies(ctx, vm, done, paused, changed)
            await step(vm)
            outcome[vm.ref] = "success"
            changed.append(vm)
            await ctx.services.commit(ctx.db.last_seq)  # durable and visible now, not at the end
            delay = vm.values[delay_field] if ctx.db.find(vm.ref) is not None else 0
            if delay > 0:
                await asyncio.sleep(delay)
        except XenAPIError as exc:
            outcome[vm.ref] = "failed: " + " ".join(exc.description)
            failed.append(vm.ref)
        finally:
            done[vm.ref].set()
            ctx.progress(sum(1 for v in outcome.values() if v != "not run") / total * 0.9)

    cancelled = None
    for batch in order:
        if failed:
            break
        try:
            ctx.checkpoint()
        except XenAPIError as exc:  # task.cancel between batches: undone as a failure is, then TASK_CANCELLED
            cancelled = exc
            break
        await asyncio.gather(*(one(vm) for vm in batch))
    if failed or cancelled:
        for vm in reversed(changed):
            if inverse is None or inverse_step is None or ctx.db.find(vm.ref) is None:
                continue
            try:
                await inverse_step(vm, inverse)
                outcome[vm.ref] = "rolled back"
            except XenAPIError as exc:
                outcome[vm.ref] = "success; rollback failed: " + " ".join(exc.description)
    names = {m.ref: m.values["name_label"] for m in members}
    result = {ref: {"name_label": names[ref], "outcome": text} for ref, text in outcome.items()}
    if ctx.task is not None and ctx.db.find(ctx.task.ref) is ctx.task:
        ctx.db.set(ctx.task, "result", dump_value(result))
    if cancelled is not None:
        raise cancelled
    if failed:
        raise XenAPIError("OPERATION_PARTIALLY_FAILED", f"VM_group.{operation}", *failed)
    ctx.progress(1.0)
    return result


def _vm_step(ctx, message, *args):
    msg = vm_module.vm.messages[message]
    full = [*args, *(p.default for p in msg.params[1 + len(args):])]  # the VM message's own defaults

    async def step(vm):  # made by the member's host (in a pool, the one it runs on)
        await forward.act(ctx, "VM", message, vm.ref, *full)

    return step


async def _inverse(ctx, vm, message):
    msg = vm_module.vm.messages[message]
    defaults = [p.default for p in msg.params[1:]]
    await forward.act(ctx, "VM", message, vm.ref, *defaults)


def _declare(operation, extra=(), doc=""):
    """One group message per VM operation, with the same extra parameters."""
    message = OPERATIONS[operation][0]

    async def body(ctx, ref, *args):
        group = ctx.current("VM_group", ref)
        await run_group(ctx, group, operation, _vm_step(ctx, message, *args),
                        lambda vm, inverse: _inverse(ctx, vm, inverse), paused=bool(args and args[0] is True))

    body.__doc__ = doc
    vm_group.message(("self", T.Ref("VM_group")), *extra, role=VM_OPERATOR, name=operation,
                     errors=("OPERATION_PARTIALLY_FAILED", "TASK_CANCELLED"))(body)


@vm_group.message(("self", T.Ref("VM_group")), ("start_paused", T.Bool, False), role=VM_OPERATOR,
                  errors=("OPERATION_PARTIALLY_FAILED", "TASK_CANCELLED", "NO_HOSTS_AVAILABLE"))
async def start(ctx, ref, start_paused):
    """Start the members in ascending order. In a pool of hosts, an ``anti_affinity`` group's
    members each start on a host of their own (none where a member runs already), chosen for all
    of them before any starts: NO_HOSTS_AVAILABLE, with nothing started, when there are fewer
    hosts that can run them than members."""
    group = ctx.current("VM_group", ref)
    plan = {}
    if group.values["placement"] == "anti_affinity":
        members = [ctx.db.get(r) for r in ctx.db.field_value(group, "VMs")]
        plan = hosts.spread(ctx.db, [m for m in members if not m.values["is_control_domain"]])
    starting = _vm_step(ctx, "start", start_paused)

    async def step(vm):
        if vm.ref in plan:
            await forward.act(ctx, "VM", "start_on", vm.ref, plan[vm.ref], start_paused, False)
        else:
            await starting(vm)

    await run_group(ctx, group, "start", step, lambda vm, inverse: _inverse(ctx, vm, inverse), paused=start_paused)


_declare("clean_shutdown", (), "Shut the members down in descending order.")
_declare("hard_shutdown", (), "Stop the members at once, in descending order (xm grp-destroy).")
_declare("clean_reboot", (), "Reboot the members in ascending order.")
_declare("hard_reboot", (), "Reset the members in ascending order.")
_declare("pause", (), "Pause the members in descending order.")
_declare("unpause", (), "Unpause the members in ascending order.")
_declare("suspend", (), "Suspend the members in descending order.")
_declare("resume", (("start_paused", T.Bool, False),), "Resume the members in ascending order.")


@vm_group.message(("self", T.Ref("VM_group")), ("directory", T.String), ("overwrite", T.Bool, False),
                  role=POOL_ADMIN, errors=("OPERATION_PARTIALLY_FAILED", "VALUE_NOT_SUPPORTED"))
async def save(ctx, ref, directory, overwrite):
    """Save every member to <directory>/<uuid>.img (descending order) with a manifest of the group.
    ``directory`` is in the image directory, as for VM.save (made if missing); a manifest or an
    image already there is VALUE_NOT_SUPPORTED unless ``overwrite`` is true."""
    folder = vm_module.image_path(ctx, directory, "directory")
    if folder.exists() and not folder.is_dir():
        raise XenAPIError("VALUE_NOT_SUPPORTED", "directory", directory, "not a directory")
    group = ctx.current("VM_group", ref)
    members = [ctx.db.get(r) for r in ctx.db.field_value(group, "VMs")]
    saved = [m for m in members if m.values["power_state"] in ("Running", "Paused")]
    if not overwrite:
        for name in (MANIFEST, *(f"{m.uuid}.img" for m in saved)):
            if os.path.lexists(folder / name):
                raise XenAPIError("VALUE_NOT_SUPPORTED", "directory", directory,
                                  f"{name} exists; pass overwrite=true to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = ["vm_group", ["uuid", group.uuid], ["name_label", group.values["name_label"]],
                ["name_description", group.values["name_description"]], ["placement", group.values["placement"]],
                ["other_config", json.dumps(group.values["other_config"])],
                *[["member", ["uuid", m.uuid], ["order", str(m.values["order"])]] for m in saved]]
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(sxp.dumps(manifest) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)

    async def step(vm):
        await _vm_step(ctx, "save", str(folder / f"{vm.uuid}.img"), overwrite)(vm)

    await run_group(ctx, group, "save", step)


@vm_group.message(("directory", T.String), ("start_paused", T.Bool, False), result=T.Ref("VM_group"),
                  role=POOL_ADMIN, errors=("OPERATION_PARTIALLY_FAILED", "VALUE_NOT_SUPPORTED"))
async def restore(ctx, directory, start_paused):
    """Bring back a group saved with VM_group.save (here or on another server), ascending order.
    ``directory`` is in the image directory, as for VM_group.save."""
    folder = vm_module.image_path(ctx, directory, "directory")
    try:
        manifest = sxp.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, sxp.SxpError) as exc:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "directory", directory, f"no readable {MANIFEST}: {exc}") from None
    images = {}
    for m in manifest[1:]:
        if isinstance(m, list) and m and m[0] == "member":
            member = str(sxp.child_value(m, "uuid"))
            if not _is_uuid(member):  # the image name comes from the file: it must stay in the directory
                raise XenAPIError("VALUE_NOT_SUPPORTED", "directory", directory, f"{MANIFEST} names a bad uuid")
            images[member] = folder / f"{member}.img"
    for image in images.values():
        if not image.is_file():
            raise XenAPIError("VALUE_NOT_SUPPORTED", "directory", directory, f"{image.name} is missing")
    metas = {member: await ctx.call_backend(ctx.backend.read_image, image) for member, image in images.items()}
    # nothing waits from here to the group operation: what is checked holds while the store changes
    uuid = sxp.child_value(manifest, "uuid")
    group = ctx.db.by_uuid_index.get(("VM_group", uuid))
    name = sxp.child_value(manifest, "name_label")
    if group is None and named(ctx, name) is not None:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "name_label", name, "another group here has this name")
    # a member not defined here is defined (halted) from its image, so the group can order it
    unknown = {member: vm_module.values_from_image(ctx, meta) for member, meta in metas.items()
               if ctx.db.by_uuid_index.get(("VM", member)) is None}
    if group is None:
        group = ctx.db.create("VM_group", {
            "uuid": uuid, "name_label": name, "group_id": _next_id(ctx),
            "name_description": sxp.child_value(manifest, "name_description", "") or "",
            "placement": sxp.child_value(manifest, "placement", "normal"),
            "other_config": json.loads(sxp.child_value(manifest, "other_config", "{}") or "{}")})
    for member, meta in metas.items():
        vm = ctx.db.by_uuid_index.get(("VM", member)) or vm_module.define_vm(ctx, unknown[member], meta)
        if vm.values["power_state"] == "Halted":
            join(ctx, vm, group)
    for member, meta in metas.items():  # every member is defined now: dependencies can be named
        vm_module.resolve_dependencies(ctx, ctx.db.by_uuid_index[("VM", member)], meta)

    async def step(vm):
        if vm.uuid in images and vm.values["power_state"] == "Halted":
            await vm_module.restore(ctx, str(images[vm.uuid]), start_paused)

    await run_group(ctx, group, "restore", step, lambda vm, inverse: _inverse(ctx, vm, inverse),
                    paused=start_paused)
    return group.ref


@vm_group.message(("self", T.Ref("VM_group")), ("destination_url", T.String), ("live", T.Bool, False),
                  role=POOL_ADMIN,
                  errors=("OPERATION_PARTIALLY_FAILED", "VALUE_NOT_SUPPORTED", "OPERATION_NOT_ALLOWED"))
async def migrate(ctx, ref, destination_url, live):
    """Migrate every running member (ascending order), then gather them in a group of the same
    name there. The destination checks every member first and refuses before anything moves;
    a member that fails (VM_MIGRATE_FAILED), or task.cancel, brings the members already moved
    back, so the group is never split: OPERATION_PARTIALLY_FAILED (or TASK_CANCELLED). A
    scheduling domain travels whole, its master and members all in the group, or the call is
    refused (OPERATION_NOT_ALLOWED) before anything moves. In a pool of hosts, ``destination_url``
    may be another host's ref (the group stays the same object), and the call is made by the host
    its running members are on (OPERATION_NOT_ALLOWED when they run on several)."""
    from xend_ext import migration

    group = ctx.current("VM_group", ref)
    record = {"name_label": group.values["name_label"], "name_description": group.values["name_description"],
              "placement": group.values["placement"]}
    members = [ctx.db.get(r) for r in ctx.db.field_value(group, "VMs")]
    leaving = [m for m in members if m.values["power_state"] in ("Running", "Paused")]
    source = hosts.sender(ctx.db, leaving)
    if source is not None:  # they run on another host of the pool: it sends them
        await forward.call(ctx, source, "VM_group.migrate", [ref, destination_url, live])
        return
    # dependencies travel as uuids (meaningful on the destination)
    needs = {m.ref: [ctx.db.get(d).uuid for d in m.values["depends_on"] if ctx.db.find(d)] for m in members}

    async def in_order(send, roll_back):
        await run_group(ctx, group, "migrate", send, lambda vm, _inverse: roll_back(vm))

    try:
        remote = await migration.migrate(ctx, leaving, destination_url, live, in_order, needs,
                                         "xend-ext group migrate")
    except XenAPIError as exc:
        if exc.code != "VM_MIGRATE_FAILED" or not leaving:
            raise
        # refused before anything moved (the destination's check): said for the first member
        first = sorted(leaving, key=lambda m: (m.values["order"], m.values["name_label"]))[0]
        outcome = {m.ref: {"name_label": m.values["name_label"], "outcome": "not run"} for m in members}
        outcome[first.ref]["outcome"] = "failed: " + " ".join(exc.description)
        if ctx.task is not None and ctx.db.find(ctx.task.ref) is ctx.task:
            ctx.db.set(ctx.task, "result", dump_value(outcome))
        raise XenAPIError("OPERATION_PARTIALLY_FAILED", "VM_group.migrate", first.ref) from None
    try:
        if leaving and not remote.pooled:  # (in a pool the group is the same object there)
            await asyncio.get_running_loop().run_in_executor(None, migration.regroup, remote, record,
                                                             [m.uuid for m in leaving])
    finally:
        await migration.logout(remote)


def _is_uuid(text):
    try:
        return str(uuid_module.UUID(text)) == text
    except ValueError:
        return False


def reconcile(ctx):
    """Group-0 and Null-Group always exist; every VM is in exactly one group."""
    for gid, name in enumerate(DEFAULTS):
        if named(ctx, name) is None:
            ctx.db.create("VM_group", {"name_label": name, "group_id": gid,
                                       "name_description": "control domains" if gid == 0 else "ungrouped VMs"})
    for vm in ctx.db.all("VM"):
        grouping.place_new_vm(ctx.db, vm)


def install(registry):
    registry.add(vm_group)
    registry.on_start.append(reconcile)
