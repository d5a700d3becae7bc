"""``VM_group`` as a class, through the official ``XenAPI`` client: the default groups, membership
(one group per VM), names, IDs, placement, events, roles, and every message of API.md §6.

The group operations themselves (ordering, rollback, save/restore, migration) are in
test_vm_group_ops.py. One server with a password file serves this module: the tests log in as
pool-admin, and the role tests as vm-operator and read-only users.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import XenAPI
from conftest import ServerProcess
from vmkit import BOOT_FIELDS, BOTH, MIB, backend_domain, event_from, failure, on_xl, unique

from xenapi_classes import build_registry

pytestmark = pytest.mark.backends(*BOTH)

USERS = {"admin": ("admin-pw", "pool-admin"), "op": ("op-pw", "vm-operator"), "viewer": ("view-pw", "read-only")}
DOM0 = "OpaqueRef:00000000-0000-0000-0000-000000000000"


def add_user(state_dir, user, password, role):
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", user, "--role", role, "--state-dir", str(state_dir),
                    "--password-stdin"], input=password + "\n", text=True, check=True, capture_output=True)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    state = tmp_path_factory.mktemp("vm-group") / "state"
    state.mkdir()
    for user, (password, role) in USERS.items():
        add_user(state, user, password, role)
    server = ServerProcess(state, "--auth", "file", unix=False, host=backend).start()
    yield server
    server.stop()


def login(server, user="admin"):
    s = XenAPI.Session(server.url)
    s.xenapi.login_with_password(user, USERS[user][0], "1.0", "xend-ext group tests")
    return s


class GroupKit:
    """A pool-admin client that removes the VMs and groups a test made."""

    def __init__(self, server) -> None:
        self.server = server
        self.session = login(server)
        self.x = self.session.xenapi
        self.vms: list[str] = []
        self.groups: list[str] = []

    def vm(self, name=None, **fields) -> str:
        record = {"name_label": name or unique("gvm"), "memory_target": str(64 * MIB),
                  "memory_static_max": str(64 * MIB), "VCPUs_at_startup": "1", "VCPUs_max": "1",
                  "VCPUs_params": {}, **BOOT_FIELDS}
        record.update({k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in fields.items()})
        ref = self.x.VM.create(record)
        self.vms.append(ref)
        return ref

    def group(self, name=None, **fields) -> str:
        ref = self.x.VM_group.create({"name_label": name or unique("grp"), **fields})
        self.groups.append(ref)
        return ref

    def close(self) -> None:
        for vm in self.vms:
            try:
                if self.x.VM.get_power_state(vm) != "Halted":
                    self.x.VM.hard_shutdown(vm)
                self.x.VM.destroy(vm)
            except XenAPI.Failure:
                pass
        for group in self.groups:
            try:
                self.x.VM_group.destroy(group)
            except XenAPI.Failure:
                pass
        self.session.xenapi.session.logout()


@pytest.fixture
def kit(srv):
    k = GroupKit(srv)
    yield k
    k.close()


def named(x, name):
    refs = x.VM_group.get_by_name_label(name)
    assert len(refs) == 1, refs
    return refs[0]


def defaults(x):
    return named(x, "Group-0"), named(x, "Null-Group")


# -- the default groups ---------------------------------------------------------------------------

def test_default_groups_at_boot(kit):
    x = kit.x
    group0, null = defaults(x)
    g0 = x.VM_group.get_record(group0)
    assert g0["group_id"] == "0" and g0["VMs"] == [DOM0] and g0["placement"] == "normal"
    assert x.VM.get_is_control_domain(DOM0) is True and x.VM.get_groups(DOM0) == [group0]
    n = x.VM_group.get_record(null)
    assert n["group_id"] == "1"
    # every VM not put elsewhere is in Null-Group, from its creation on
    vm = kit.vm()
    assert x.VM.get_groups(vm) == [null]
    assert vm in x.VM_group.get_VMs(null) and vm not in x.VM_group.get_VMs(group0)
    for rec in x.VM.get_all_records().values():  # exactly one group each, Group-0 for control domains
        assert len(rec["groups"]) == 1, rec["name_label"]
        assert (rec["groups"] == [group0]) == rec["is_control_domain"], rec["name_label"]


@pytest.mark.parametrize("name", ["Group-0", "Null-Group"])
def test_default_groups_can_be_neither_destroyed_nor_renamed(kit, name):
    x = kit.x
    ref = named(x, name)
    assert failure(x.VM_group.destroy, ref)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM_group.set_name_label, ref, name + "-renamed")[0] == "OPERATION_NOT_ALLOWED"
    assert x.VM_group.get_name_label(ref) == name
    # their other fields are ordinary
    old = x.VM_group.get_name_description(ref)
    x.VM_group.set_name_description(ref, "changed")
    assert x.VM_group.get_name_description(ref) == "changed"
    x.VM_group.set_name_description(ref, old)
    # and no other group may take their names
    assert failure(x.VM_group.create, {"name_label": name})[:3] == ["VALUE_NOT_SUPPORTED", "name_label", name]
    other = kit.group()
    assert failure(x.VM_group.set_name_label, other, name)[0] == "VALUE_NOT_SUPPORTED"


def test_domain0_cannot_leave_group0(kit):
    x = kit.x
    group0, null = defaults(x)
    other = kit.group()
    assert failure(x.VM_group.add_VM, other, DOM0)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM_group.add_VM, null, DOM0)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM_group.remove_VM, group0, DOM0)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM.set_groups, DOM0, [other])[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM.set_groups, DOM0, [])[0] == "OPERATION_NOT_ALLOWED"
    before = x.VM_group.get_all()
    assert failure(x.VM_group.create, {"name_label": unique("g"), "VMs": [DOM0]})[0] == "OPERATION_NOT_ALLOWED"
    assert x.VM_group.get_all() == before  # the refused create made nothing
    x.VM.set_groups(DOM0, [group0])  # where it is already: fine
    x.VM_group.add_VM(group0, DOM0)
    assert x.VM.get_groups(DOM0) == [group0] and x.VM_group.get_VMs(group0) == [DOM0]


def test_no_guest_joins_group0(kit):
    x = kit.x
    group0, null = defaults(x)
    vm = kit.vm()
    assert failure(x.VM_group.add_VM, group0, vm)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM.set_groups, vm, [group0])[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM_group.create, {"name_label": unique("g"), "VMs": [vm, DOM0]})[0] == "OPERATION_NOT_ALLOWED"
    assert x.VM.get_groups(vm) == [null]
    assert x.VM_group.get_VMs(group0) == [DOM0]


# -- create, names, IDs, fields --------------------------------------------------------------------

def test_create_with_members_named_every_way(kit):
    x = kit.x
    a, b, c = kit.vm(), kit.vm(), kit.vm()
    by_name = x.VM.get_name_label(c)
    group = kit.group(name_description="shop", placement="anti_affinity", other_config={"owner": "tests"},
                      VMs=[a, x.VM.get_uuid(b), by_name])
    record = x.VM_group.get_record(group)
    assert sorted(record["VMs"]) == sorted([a, b, c])
    assert record["name_description"] == "shop" and record["placement"] == "anti_affinity"
    assert record["other_config"] == {"owner": "tests"}
    for vm in (a, b, c):
        assert x.VM.get_groups(vm) == [group]
    # the generic accessors
    uuid = x.VM_group.get_uuid(group)
    assert x.VM_group.get_by_uuid(uuid) == group and record["uuid"] == uuid
    assert x.VM_group.get_by_name_label(record["name_label"]) == [group]
    assert x.VM_group.get_name_label(group) == record["name_label"]
    assert x.VM_group.get_name_description(group) == "shop"
    assert x.VM_group.get_placement(group) == "anti_affinity"
    assert x.VM_group.get_other_config(group) == {"owner": "tests"}
    assert sorted(x.VM_group.get_VMs(group)) == sorted([a, b, c])
    assert group in x.VM_group.get_all() and x.VM_group.get_all_records()[group]["uuid"] == uuid
    where = x.VM_group.get_all_records_where(f'field "name_label"="{record["name_label"]}"')
    assert list(where) == [group]
    assert list(x.VM_group.get_all_records_where('field "placement"="anti_affinity"')) == [group]
    assert failure(x.VM_group.get_by_uuid, "00000000-1111-2222-3333-444444444444")[0] == "UUID_INVALID"
    assert failure(x.VM_group.get_record, "OpaqueRef:nothing")[:2] == ["HANDLE_INVALID", "VM_group"]


def test_create_takes_members_out_of_their_group(kit):
    x = kit.x
    vm = kit.vm()
    first = kit.group(VMs=[vm])
    second = kit.group(VMs=[vm])
    assert x.VM.get_groups(vm) == [second]
    assert x.VM_group.get_VMs(first) == [] and x.VM_group.get_VMs(second) == [vm]


@pytest.mark.parametrize(("record", "error"), [
    ({"name_label": ""}, ["VALUE_NOT_SUPPORTED", "name_label", ""]),
    ({"name_label": "NAME", "placement": "spread"}, ["VALUE_NOT_SUPPORTED", "placement", "spread"]),
    ({"name_label": "NAME", "VMs": ["OpaqueRef:no-such-vm"]}, ["HANDLE_INVALID", "VM", "OpaqueRef:no-such-vm"]),
    ({"name_label": "NAME", "VMs": "not a list"}, ["FIELD_TYPE_ERROR", "VMs"]),
])
def test_create_refusals_make_nothing(kit, record, error):
    x = kit.x
    before = sorted(x.VM_group.get_all())
    record = {k: unique("bad") if v == "NAME" else v for k, v in record.items()}
    assert failure(x.VM_group.create, record)[:len(error)] == error
    assert sorted(x.VM_group.get_all()) == before


def test_names_are_unique(kit):
    x = kit.x
    one = kit.group()
    two = kit.group()
    name = x.VM_group.get_name_label(one)
    assert failure(x.VM_group.create, {"name_label": name}) == [
        "VALUE_NOT_SUPPORTED", "name_label", name, "another group has this name"]
    assert failure(x.VM_group.set_name_label, two, name)[:3] == ["VALUE_NOT_SUPPORTED", "name_label", name]
    x.VM_group.set_name_label(one, name)  # its own name again is no clash
    renamed = unique("renamed")
    x.VM_group.set_name_label(two, renamed)
    assert x.VM_group.get_by_name_label(renamed) == [two]
    x.VM_group.set_name_description(two, "described")
    assert x.VM_group.get_name_description(two) == "described"


def test_group_ids(kit):
    x = kit.x
    ids = {ref: int(rec["group_id"]) for ref, rec in x.VM_group.get_all_records().items()}
    assert len(set(ids.values())) == len(ids)  # no two groups share an ID
    one = kit.group()
    two = kit.group()
    first, second = int(x.VM_group.get_group_id(one)), int(x.VM_group.get_group_id(two))
    assert first > max(ids.values()) and second > first
    x.VM_group.set_name_label(one, unique("renamed"))
    assert int(x.VM_group.get_group_id(one)) == first  # the ID stays with the group
    # a create record cannot choose the ID (it is read-only)
    three = kit.group(group_id="1")
    assert int(x.VM_group.get_group_id(three)) > second


def test_other_config_messages(kit):
    x = kit.x
    group = kit.group(other_config={"a": "1"})
    x.VM_group.add_to_other_config(group, "b", "2")
    assert x.VM_group.get_other_config(group) == {"a": "1", "b": "2"}
    assert failure(x.VM_group.add_to_other_config, group, "b", "3")[0] == "MAP_DUPLICATE_KEY"
    x.VM_group.remove_from_other_config(group, "a")
    assert x.VM_group.get_other_config(group) == {"b": "2"}
    x.VM_group.set_other_config(group, {"c": "3"})
    assert x.VM_group.get_other_config(group) == {"c": "3"}


def test_placement_is_recorded_and_fixed_at_create(kit):
    x = kit.x
    plain = kit.group()
    spread = kit.group(placement="anti_affinity", VMs=[kit.vm(), kit.vm()])
    assert x.VM_group.get_placement(plain) == "normal"
    assert x.VM_group.get_placement(spread) == "anti_affinity"
    assert failure(x.VM_group.set_placement, spread, "normal")[0] == "MESSAGE_METHOD_UNKNOWN"
    # one host: anti-affinity is soft (XAPI's rule), the members still start, all on that host
    x.VM_group.start(spread, False)
    host = x.host.get_all()[0]
    for vm in x.VM_group.get_VMs(spread):
        assert x.VM.get_power_state(vm) == "Running" and x.VM.get_resident_on(vm) == host
    x.VM_group.hard_shutdown(spread)


# -- membership: one group per VM ---------------------------------------------------------------

def test_add_vm_moves_the_vm_out_of_its_group(kit):
    x = kit.x
    _, null = defaults(x)
    vm = kit.vm()
    one, two = kit.group(), kit.group()
    x.VM_group.add_VM(one, vm)
    assert x.VM.get_groups(vm) == [one] and vm not in x.VM_group.get_VMs(null)
    x.VM_group.add_VM(two, vm)
    assert x.VM.get_groups(vm) == [two]
    assert x.VM_group.get_VMs(one) == [] and x.VM_group.get_VMs(two) == [vm]
    x.VM_group.add_VM(two, vm)  # again: nothing changes
    assert x.VM.get_groups(vm) == [two]


@on_xl()
def test_a_running_vm_changes_group_and_keeps_running(kit):
    x = kit.x
    vm = kit.vm()
    x.VM.start(vm, False, False)
    domid = x.VM.get_domid(vm)
    group = kit.group()
    x.VM_group.add_VM(group, vm)
    assert x.VM.get_groups(vm) == [group]
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domid


def test_set_groups_is_the_xapi_way(kit):
    x = kit.x
    _, null = defaults(x)
    vm = kit.vm()
    one, two = kit.group(), kit.group()
    x.VM.set_groups(vm, [one])
    assert x.VM.get_groups(vm) == [one] and x.VM_group.get_VMs(one) == [vm]
    assert failure(x.VM.set_groups, vm, [one, two]) == ["TOO_MANY_GROUPS"]
    assert x.VM.get_groups(vm) == [one]
    x.VM.set_groups(vm, [two])
    assert x.VM.get_groups(vm) == [two] and x.VM_group.get_VMs(one) == []
    x.VM.set_groups(vm, [])
    assert x.VM.get_groups(vm) == [null] and x.VM_group.get_VMs(two) == []
    assert failure(x.VM.set_groups, vm, ["OpaqueRef:no-such-group"])[0] == "HANDLE_INVALID"


def test_remove_vm_goes_back_to_null_group(kit):
    x = kit.x
    _, null = defaults(x)
    vm, stranger = kit.vm(), kit.vm()
    group = kit.group(VMs=[vm])
    assert failure(x.VM_group.remove_VM, group, stranger)[:2] == ["VALUE_NOT_SUPPORTED", "vm"]
    x.VM_group.remove_VM(group, vm)
    assert x.VM.get_groups(vm) == [null] and x.VM_group.get_VMs(group) == []
    x.VM_group.remove_VM(null, vm)  # out of Null-Group is where it already is
    assert x.VM.get_groups(vm) == [null]


def test_destroy_moves_members_to_null_group(kit):
    x = kit.x
    _, null = defaults(x)
    running, halted = kit.vm(), kit.vm()
    group = kit.group(VMs=[running, halted])
    x.VM.start(running, False, False)
    uuid = x.VM_group.get_uuid(group)
    x.VM_group.destroy(group)
    assert failure(x.VM_group.get_record, group)[0] == "HANDLE_INVALID"
    assert failure(x.VM_group.get_by_uuid, uuid)[0] == "UUID_INVALID"
    for vm in (running, halted):
        assert x.VM.get_groups(vm) == [null] and vm in x.VM_group.get_VMs(null)
    assert x.VM.get_power_state(running) == "Running"  # destroying a group stops nothing
    assert backend_domain(kit.server, x.VM.get_uuid(running), x)["state"] == "Running"


def test_a_destroyed_vm_leaves_its_group(kit):
    x = kit.x
    vm, stays = kit.vm(), kit.vm()
    group = kit.group(VMs=[vm, stays])
    x.VM.destroy(vm)
    assert x.VM_group.get_VMs(group) == [stays]


# -- events ------------------------------------------------------------------------------------

def test_membership_and_lifetime_emit_events(kit):
    x = kit.x
    _, null = defaults(x)
    vm = kit.vm()
    token = event_from(x, ["vm_group"], "", 0.0)["token"]
    group = kit.group()
    result = event_from(x, ["vm_group"], token, 5.0)
    token = result["token"]
    assert [(e["operation"], e["ref"]) for e in result["events"]] == [("add", group)]
    x.VM_group.add_VM(group, vm)
    events = event_from(x, ["vm_group"], token, 5.0)
    token = events["token"]
    changed = {e["ref"]: e for e in events["events"]}
    assert changed[group]["operation"] == "mod" and changed[group]["snapshot"]["VMs"] == [vm]
    assert vm not in changed[null]["snapshot"]["VMs"]
    x.VM_group.destroy(group)
    events = event_from(x, ["vm_group"], token, 5.0)["events"]
    gone = [e for e in events if e["ref"] == group]
    assert gone[-1]["operation"] == "del"
    assert vm in next(e for e in events if e["ref"] == null)["snapshot"]["VMs"]


def test_async_create_and_destroy(kit):
    x = kit.x
    vm = kit.vm()
    name = unique("async")
    task = x.Async.VM_group.create({"name_label": name, "VMs": [vm]})
    group = wait(x, task)
    kit.groups.append(group)
    assert x.VM_group.get_by_name_label(name) == [group] and x.VM.get_groups(vm) == [group]
    wait(x, x.Async.VM_group.destroy(group))
    assert x.VM_group.get_by_name_label(name) == []


def wait(x, task, seconds=30.0):
    """The task's result value once it succeeded (a ref, or the XML-RPC text of a struct)."""
    token = ""
    record = x.task.get_record(task)
    while record["status"] == "pending":
        answer = event_from(x, [f"task/{task}"], token, seconds)
        token = answer["token"]
        for e in answer["events"]:
            record = e.get("snapshot") or record
    assert record["status"] == "success", record
    assert float(record["progress"]) == 1.0
    x.task.destroy(task)
    text = record["result"]
    return text.replace("<value>", "").replace("</value>", "") if text.count("<value>") == 1 else text


# -- roles ------------------------------------------------------------------------------------

OPERATOR_OPERATIONS = [("start", (False,)), ("pause", ()), ("unpause", ()), ("suspend", ()), ("resume", (False,)),
                       ("clean_reboot", ()), ("hard_reboot", ()), ("clean_shutdown", ()), ("start", (True,)),
                       ("hard_shutdown", ())]


def test_vm_operator_runs_group_operations_and_membership(kit, srv):
    op = login(srv, "op").xenapi
    vm = kit.vm()
    group = kit.group(VMs=[vm])
    other = kit.group()
    for message, args in OPERATOR_OPERATIONS:
        getattr(op.VM_group, message)(group, *args)
    assert op.VM.get_power_state(vm) == "Halted"
    task = op.Async.VM_group.start(group, False)
    wait(op, task)
    assert op.VM.get_power_state(vm) == "Running"
    op.VM_group.add_VM(other, vm)
    op.VM_group.remove_VM(other, vm)
    op.VM.set_groups(vm, [group])
    assert op.VM.get_groups(vm) == [group]


@pytest.mark.parametrize("user", ["op", "viewer"])
def test_create_destroy_and_naming_need_pool_admin(kit, srv, user):
    who = login(srv, user).xenapi
    vm = kit.vm()
    group = kit.group(VMs=[vm])
    calls = [("create", ({"name_label": unique("nope")},)), ("destroy", (group,)),
             ("set_name_label", (group, "x")), ("set_name_description", (group, "x")),
             ("add_to_other_config", (group, "k", "v")), ("save", (group, "/tmp")),
             ("restore", ("/tmp",)), ("migrate", (group, "http://127.0.0.1:1/", False))]
    if user == "viewer":
        calls += [("start", (group, False)), ("add_VM", (group, vm)), ("remove_VM", (group, vm))]
    for message, args in calls:
        denied = failure(getattr(who.VM_group, message), *args)
        assert denied[:2] == ["RBAC_PERMISSION_DENIED", f"vm_group.{message.lower()}"], (message, denied)
    if user == "viewer":
        assert failure(who.VM.set_groups, vm, [])[0] == "RBAC_PERMISSION_DENIED"
        assert who.VM_group.get_record(group)["VMs"] == [vm]  # reading is for everyone
    assert kit.x.VM_group.get_VMs(group) == [vm] and kit.x.VM.get_power_state(vm) == "Halted"


# -- every message is exercised --------------------------------------------------------------------

#: every message of VM_group and where it is tested (this module, or test_vm_group_ops.py: ops)
COVERED = {
    "create": "test_create_with_members_named_every_way",
    "destroy": "test_destroy_moves_members_to_null_group",
    "add_VM": "test_add_vm_moves_the_vm_out_of_its_group",
    "remove_VM": "test_remove_vm_goes_back_to_null_group",
    "get_all": "test_create_with_members_named_every_way",
    "get_all_records": "test_create_with_members_named_every_way",
    "get_all_records_where": "test_create_with_members_named_every_way",
    "get_record": "test_create_with_members_named_every_way",
    "get_by_uuid": "test_create_with_members_named_every_way",
    "get_by_name_label": "test_create_with_members_named_every_way",
    "get_uuid": "test_create_with_members_named_every_way",
    "get_VMs": "test_create_with_members_named_every_way",
    "get_group_id": "test_group_ids",
    "get_name_label": "test_create_with_members_named_every_way",
    "get_name_description": "test_create_with_members_named_every_way",
    "set_name_label": "test_names_are_unique",
    "set_name_description": "test_names_are_unique",
    "get_placement": "test_placement_is_recorded_and_fixed_at_create",
    "get_other_config": "test_other_config_messages",
    "set_other_config": "test_other_config_messages",
    "add_to_other_config": "test_other_config_messages",
    "remove_from_other_config": "test_other_config_messages",
    "start": "ops: test_start_runs_in_ascending_order_equal_orders_together",
    "clean_shutdown": "ops: test_each_operation_runs_in_its_order",
    "hard_shutdown": "ops: test_each_operation_runs_in_its_order",
    "clean_reboot": "ops: test_each_operation_runs_in_its_order",
    "hard_reboot": "ops: test_each_operation_runs_in_its_order",
    "pause": "ops: test_each_operation_runs_in_its_order",
    "unpause": "ops: test_each_operation_runs_in_its_order",
    "suspend": "ops: test_each_operation_runs_in_its_order",
    "resume": "ops: test_each_operation_runs_in_its_order",
    "save": "ops: test_save_and_restore_across_a_server_restart",
    "restore": "ops: test_save_and_restore_across_a_server_restart",
    "migrate": "ops: test_migrate_a_group",
}


def test_every_message_is_covered(kit):
    """A message added to VM_group fails this test until a test exercises it and it is listed above."""
    served = {m.split(".", 1)[1] for m in kit.x.host.list_methods() if m.startswith("VM_group.")}
    assert served == set(COVERED)
    declared = {name for name in build_registry().methods if name.startswith("VM_group.")}
    assert {m.split(".", 1)[1] for m in declared} == served
    assert {m for m in kit.x.host.list_methods() if m.startswith("Async.VM_group.")} >= {
        f"Async.VM_group.{m}" for m in ("start", "save", "restore", "migrate", "create", "destroy")}
    assert "VM.set_groups" in kit.x.host.list_methods() and "VM.get_groups" in kit.x.host.list_methods()
