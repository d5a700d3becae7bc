"""Group membership (seed 004): a VM is in exactly one VM_group. ``Group-0`` holds the control
domain, ``Null-Group`` every VM not put elsewhere. A rule module below the class modules: VM (a
new VM's group, ``VM.set_groups``) and VM_group call it; it calls neither.
"""

from __future__ import annotations

from xend_ext.wire import XenAPIError

GROUP0, NULL_GROUP = "Group-0", "Null-Group"
DEFAULTS = (GROUP0, NULL_GROUP)


def named(db, name):
    return next(iter(db.find_by("VM_group", "name_label", name)), None)


def join(db, vm, group):
    """Put a VM in a group (out of its current one): the only way membership changes."""
    if group.values["name_label"] == GROUP0 and not vm.values["is_control_domain"]:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Group-0 holds control domains only")
    if vm.values["is_control_domain"] and group.values["name_label"] != GROUP0:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Domain-0 stays in Group-0")
    db.set(vm, "groups", [group.ref])


def place_new_vm(db, vm):
    """Every VM starts in a group: Domain-0 in Group-0, the others in Null-Group."""
    if not vm.values["groups"] or db.find(vm.values["groups"][0]) is None:
        group = named(db, GROUP0 if vm.values["is_control_domain"] else NULL_GROUP)
        if group is not None:
            db.set(vm, "groups", [group.ref])


def set_groups(db, vm_ref, groups):
    """VM.set_groups (XAPI): at most one group; [] means Null-Group."""
    if len(groups) > 1:
        raise XenAPIError("TOO_MANY_GROUPS")
    vm = db.get(vm_ref)
    join(db, vm, db.get(groups[0]) if groups else named(db, NULL_GROUP))
