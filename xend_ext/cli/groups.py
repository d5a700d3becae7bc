"""Group commands: ``xm grp-*`` (seed 004's domain groups, API.md §6).

A group is a named set of domains operated on as one: ``xm grp-start shop`` starts its members in
ascending ``order`` (a member waits for the domains it ``depends_on``), ``grp-shutdown`` stops them
in descending order. Every domain is in exactly one group: Domain-0 in ``Group-0``, a domain not put
elsewhere in ``Null-Group``; ``xm grp-join DOMAIN GRP`` moves a domain to another group.

Each group operation runs on the server as one task (progress is shown on a terminal) and ends
with one line per member, in the order the operation takes them, saying what happened to it. When
a member fails, the server undoes what it had done to the others where it can (a started member is
stopped again) and the command says which member failed and why, and exits with status 1.

A GRP argument is a group's name, its uuid or its group ID; a DOMAIN argument is a domain as every
xm command takes it (name, uuid or domain ID).
"""

from __future__ import annotations

import shlex
import urllib.parse

from . import domain, domain_config, group_config, tasks
from .args import Exclusive, arg, note
from .client import Client
from .connection import CliError, XenAPIFailure
from .errors import explain
from .sxpout import dumps_json, pretty
from .vms import UUID, find_ref

GROUP0, NULL_GROUP = "Group-0", "Null-Group"
LIST_HEADER = "%-20s %3s  %s" % ("Name", "ID", "Members")  # noqa: UP031 - xm's style
LIST_ROW = "%-20s %3s  %s"
MEMBER_ROW = "  %-20s order %-3s %s"
LIVE = ("Running", "Paused")


class PartialFailure(CliError):
    """A group operation failed for some members (the report above says which and why)."""


class Interrupted(CliError):
    """Ctrl-C while watching: the operation goes on on the server."""


class Op:
    """How a group operation reads: what it did to a member, what undoing it did, and in which
    direction of ``order`` it runs (up: ascending; down: descending)."""

    def __init__(self, message: str, done: str, undone: str, direction: str, gerund: str) -> None:
        self.message, self.done, self.undone, self.direction, self.gerund = message, done, undone, direction, gerund


OPS = {
    "start": Op("start", "started", "stopped again", "up", "starting"),
    "clean_shutdown": Op("clean_shutdown", "shut down", "started again", "down", "shutting down"),
    "hard_shutdown": Op("hard_shutdown", "destroyed", "started again", "down", "destroying"),
    "clean_reboot": Op("clean_reboot", "rebooted", "", "up", "rebooting"),
    "hard_reboot": Op("hard_reboot", "reset", "", "up", "resetting"),
    "pause": Op("pause", "paused", "unpaused again", "down", "pausing"),
    "unpause": Op("unpause", "unpaused", "paused again", "up", "unpausing"),
    "suspend": Op("suspend", "suspended", "resumed again", "down", "suspending"),
    "resume": Op("resume", "resumed", "suspended again", "up", "resuming"),
    "save": Op("save", "saved", "", "down", "saving"),
    "restore": Op("restore", "restored", "stopped again", "up", "restoring"),
    "migrate": Op("migrate", "migrated", "", "up", "migrating"),
}

# the parameters of a member's failure, as the outcome text ("failed: CODE p1 p2 ...") joins them
# with spaces: how many there are (the last takes the rest) for the codes a member's step gives
PARAM_COUNTS = {"HOST_NOT_ENOUGH_FREE_MEMORY": 2, "VM_BAD_POWER_STATE": 3, "VM_MIGRATE_FAILED": 4,
                "OPERATION_NOT_ALLOWED": 1, "VALUE_NOT_SUPPORTED": 3, "POOL_BAD_STATE": 1, "INSUFFICIENT_CPUS": 2,
                "HANDLE_INVALID": 2, "INVALID_VALUE": 2, "NOT_IMPLEMENTED": 1, "INTERNAL_ERROR": 1}


# -- lookups ---------------------------------------------------------------------------------

def find_group(client: Client, text: str) -> tuple[str, dict]:
    """The group a GRP argument names: its name, its uuid, or its group ID."""
    refs = client.call("VM_group.get_by_name_label", text)
    ref = refs[0] if refs else None
    if ref is None and UUID.match(text):
        try:
            ref = client.call("VM_group.get_by_uuid", text.lower())
        except XenAPIFailure as exc:
            if exc.code not in ("UUID_INVALID", "HANDLE_INVALID"):
                raise
    if ref is None and text.isdigit():
        found = client.call("VM_group.get_all_records_where", f'field "group_id"="{int(text)}"')
        ref = next(iter(found), None)
    if ref is None:
        raise CliError(f"Group '{text}' does not exist; 'xm grp-list' lists the groups.")
    record = client.call("VM_group.get_record", ref)
    client.about["group"] = record["name_label"]
    return ref, record


def _vms(client: Client) -> dict[str, dict]:
    """Every VM record, each remembered under its name (errors may carry only a ref)."""
    records = client.call("VM.get_all_records")
    for ref, record in records.items():
        client.remember(ref, record)
    return records


def _plan(members: dict[str, dict], direction: str) -> list[str]:
    """The members in the order an operation takes them, as the server orders them: by ``order``,
    a member after the members it depends on; descending to stop. Equal places run together."""
    level: dict[str, int] = {}

    def depth(ref: str, path: tuple[str, ...] = ()) -> int:
        if ref in path:  # a cycle: the server refuses it; list by order
            return int(members[ref]["order"])
        if ref not in level:
            after = [depth(d, (*path, ref)) + 1 for d in members[ref]["depends_on"] if d in members]
            level[ref] = max([int(members[ref]["order"]), *after])
        return level[ref]

    for ref in members:
        depth(ref)
    up = sorted(members, key=lambda r: (level[r], members[r]["name_label"]))
    if direction == "up":
        return up
    return sorted(members, key=lambda r: (-level[r], members[r]["name_label"]))


def _public(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- running a group operation -----------------------------------------------------------------

def run_task(client: Client, method: str, *args, label: str) -> tuple[object, list[str] | None]:
    """``Async.<method>`` watched to its end (progress on a terminal): (result, None) on success,
    (the members' outcomes, the error) on OPERATION_PARTIALLY_FAILED; any other failure raises,
    so it reads as the same sentence a direct call would."""
    task = client.call("Async." + method, *args)
    progress = tasks.Progress(label)
    try:
        record = tasks.watch(client, task, progress, None)
    except KeyboardInterrupt:
        progress.finish()
        raise Interrupted(f"interrupted; {method} goes on on the server as task {task} "
                          "(it can be cancelled with task.cancel)") from None
    progress.finish()
    tasks.forget(client, task)
    status = record.get("status", "")
    value = tasks.result_value(record.get("result", ""))
    if status == "cancelled":
        raise CliError(f"{method} was cancelled before it finished")
    if status == "failure":
        error = list(record.get("error_info") or ["INTERNAL_ERROR", "the task failed without a reason"])
        if error[0] == "OPERATION_PARTIALLY_FAILED" and isinstance(value, dict):
            return value, error
        raise XenAPIFailure(error)
    return value, None


def member_failure(text: str) -> XenAPIFailure:
    """A member's ``failed: CODE p1 p2 ...`` outcome as the failure it was."""
    code, _, rest = text.partition(" ")
    count = PARAM_COUNTS.get(code)
    if not rest:
        params: list[str] = []
    elif count is None:
        params = [rest]
    else:
        params = rest.split(" ", count - 1)
    return XenAPIFailure([code, *params])


def _sentence(client: Client, command: str, text: str) -> str:
    return explain(member_failure(text), command, client.names, client.about)


def _state_note(op: Op, record: dict | None) -> str:
    """`` (id 7)`` for a member that runs afterwards (``paused, id 7`` when that is not what the
    operation is about); nothing for one that does not."""
    if record is None or record["power_state"] not in LIVE:
        return ""
    paused = "paused, " if record["power_state"] == "Paused" and op.message != "pause" else ""
    return f" ({paused}id {record['domid']})"


def describe_outcome(client: Client, command: str, op: Op, outcome: str, after: dict | None) -> str:
    """One member's outcome as a phrase."""
    if outcome == "success":
        return op.done + ("" if op.message == "migrate" else _state_note(op, after))
    if outcome.startswith("skipped: already "):
        return f"already {outcome.removeprefix('skipped: already ')} (left alone)"
    if outcome == "rolled back":
        return f"{op.done}, then {op.undone} (rolled back)"
    if outcome.startswith("success; rollback failed: "):
        reason = _sentence(client, command, outcome.removeprefix("success; rollback failed: "))
        return f"{op.done}, and could not be undone: {reason}"
    if outcome.startswith("failed: "):
        return "FAILED: " + _sentence(client, command, outcome.removeprefix("failed: "))
    if outcome == "not run":
        return f"not {op.done} (an earlier member failed)"
    return outcome


def report(client: Client, command: str, op: Op, title: str, before: dict[str, dict],
           result: dict | None, failed: list[str] | None) -> None:
    """The members' lines (in the operation's order), then, on a partial failure, the error."""
    after = _vms(client)
    entries = result if isinstance(result, dict) else {}
    outcomes = {ref: entry.get("outcome", "") for ref, entry in entries.items()}
    for ref, entry in entries.items():
        client.names.setdefault(ref, entry.get("name_label", ref))
    members = {ref: before.get(ref) or after.get(ref) for ref in set(before) | set(outcomes)}
    members = {ref: rec for ref, rec in members.items() if rec is not None}
    print(title)
    if not members:
        print("  (no members)")
    for ref in _plan(members, op.direction):
        rec = members[ref]
        outcome = outcomes.get(ref, "success" if after.get(ref, rec)["power_state"] in LIVE else "")
        if not outcome:
            text = "halted (not part of it)"
        else:
            text = describe_outcome(client, command, op, outcome, after.get(ref))
        print(MEMBER_ROW % (rec["name_label"], rec["order"], text))
    if failed is None:
        return
    group = client.about.get("group", "")
    names = ", ".join(client.names.get(ref, ref) for ref in failed[2:]) or "a member"
    rolled = any(text == "rolled back" for text in outcomes.values())
    kept = any(text == "success" for text in outcomes.values())
    tail = ""
    if rolled:
        tail = f"; the members already {op.done} were {op.undone}"
    elif kept:
        tail = f"; the members already {op.done} stay so"
    what = f"group '{group}'" if group else "the group"
    raise PartialFailure(f"{op.gerund} {what} failed for {names} (see above){tail}.")


def operate(client: Client, command: str, operation: str, ref: str, record: dict, *args, title: str = "") -> int:
    """Run one group operation on GRP and report each member."""
    op = OPS[operation]
    vms = _vms(client)
    before = {r: vms[r] for r in record["VMs"] if r in vms and not vms[r]["is_control_domain"]}
    result, failed = run_task(client, f"VM_group.{op.message}", ref, *args,
                              label=f"{op.gerund} {record['name_label']}")
    heading = title or f"Group '{record['name_label']}' {op.done}:"
    if failed:
        heading = f"Group '{record['name_label']}' was not {op.done}:"
    report(client, command, op, heading, before, result if isinstance(result, dict) else None, failed)
    return 0


def _simple(operation: str, doc: str, *, paused: bool = False):
    """grp-shutdown, grp-destroy, grp-pause ...: one group operation on GRP."""

    def command(client: Client, args) -> int:
        ref, record = find_group(client, args.group)
        extra = (bool(args.paused),) if paused else ()
        return operate(client, args.command, operation, ref, record, *extra)

    command.__doc__ = doc
    return command


# -- list ------------------------------------------------------------------------------------

def _members_of(record: dict, vms: dict[str, dict]) -> list[tuple[str, dict]]:
    members = [(ref, vms[ref]) for ref in record["VMs"] if ref in vms]
    return sorted(members, key=lambda item: (int(item[1]["order"]), item[1]["name_label"]))


def _member_info(ref: str, vm: dict, vms: dict[str, dict]) -> dict:
    return {"ref": ref, "name_label": vm["name_label"], "uuid": vm["uuid"], "order": int(vm["order"]),
            "start_delay": int(vm["start_delay"]), "shutdown_delay": int(vm["shutdown_delay"]),
            "depends_on": [vms[d]["name_label"] if d in vms else d for d in vm["depends_on"]],
            "power_state": vm["power_state"], "domid": int(vm["domid"])}


def _long_sxp(record: dict, members: list[tuple[str, dict]], vms: dict[str, dict]) -> list:
    node: list = ["group", ["name", record["name_label"]], ["group_id", str(record["group_id"])],
                  ["uuid", record["uuid"]], ["description", record["name_description"]],
                  ["placement", record["placement"]]]
    rows: list = ["members"]
    for ref, vm in members:
        info = _member_info(ref, vm, vms)
        row = ["domain", ["name", info["name_label"]], ["order", str(info["order"])],
               ["depends_on", *info["depends_on"]], ["state", info["power_state"].lower()],
               ["domid", str(info["domid"])]]
        if info["start_delay"]:
            row.append(["start_delay", str(info["start_delay"])])
        if info["shutdown_delay"]:
            row.append(["shutdown_delay", str(info["shutdown_delay"])])
        rows.append(row)
    node.append(rows)
    if record.get("other_config"):
        node.append(["other_config", *([k, v] for k, v in sorted(record["other_config"].items()))])
    return node


def list_groups(client: Client, args) -> int:
    """List groups: name, group ID and each member with its state (members by order).

    -l prints one SXP per group with each member's order, depends_on and state; --json the
    Xen-API records with the members' details.
    """
    records = client.call("VM_group.get_all_records")
    if args.groups:
        chosen = {}
        for text in args.groups:
            ref, record = find_group(client, text)
            chosen[ref] = record
        records = chosen
    vms = _vms(client)
    groups = sorted(records.items(), key=lambda item: int(item[1]["group_id"]))
    if args.json:
        print(dumps_json([{**rec, "ref": ref, "members": [_member_info(r, vm, vms) for r, vm in _members_of(rec, vms)]}
                          for ref, rec in groups]))
    elif args.long:
        for _ref, rec in groups:
            print(pretty(_long_sxp(rec, _members_of(rec, vms), vms)))
    else:
        print(LIST_HEADER)
        for _ref, rec in groups:
            members = " ".join(f"{vm['name_label']}({vm['power_state'].lower()})" for _r, vm in _members_of(rec, vms))
            print((LIST_ROW % (rec["name_label"], rec["group_id"], members or "-")).rstrip())
    return 0


# -- new / create / delete / join ---------------------------------------------------------------

def _name_free(client: Client, name: str) -> None:
    if client.call("VM_group.get_by_name_label", name):
        raise CliError(f"a group called '{name}' already exists; choose another name, or remove it with "
                       f"'xm grp-delete {shlex.quote(name)}'")


def new(client: Client, args) -> int:
    """Define a group with the domains named (each leaves its current group); it starts nothing."""
    _name_free(client, args.name)
    refs = [find_ref(client, text) for text in args.domains]
    record = {"name_label": args.name, "name_description": args.description or "", "placement": args.placement,
              "VMs": refs}
    ref = client.call("VM_group.create", record)
    group_id = client.call("VM_group.get_group_id", ref)
    if refs:
        print(f"Group '{args.name}' created (id {group_id}) with {', '.join(client.names[r] for r in refs)}.")
    else:
        print(f"Group '{args.name}' created (id {group_id}); add domains with "
              f"'xm grp-join DOMAIN {shlex.quote(args.name)}'.")
    return 0


def create(client: Client, args) -> int:
    """Define a group from a group config file and start its members (as the seed's grp-create).

    The config (Python syntax, read, never executed) sets name, members (domain names, or domain
    config files: entries with a '/' or ending in .cfg, looked up next to the group config first),
    and optionally description and placement (normal or anti_affinity). A domain config member is
    defined from its file as 'xm new' would (a domain of that name already defined is used as it
    is). The members then start in ascending order, as 'xm grp-start' starts them. If anything
    fails, the group and the domains this command defined are removed again, so a failed create
    leaves nothing behind; the members already started were stopped by the server.
    """
    config = group_config.read(args.config, args.vars, args.path, args.domain_path, warn=note)
    if args.dryrun:
        print(dumps_json(config.describe()))
        return 0
    _name_free(client, config.name)
    note(f'Using config file "{config.source.path if config.source else args.config}".')
    client.about["group"] = config.name
    defined: list[str] = []
    group = None
    try:
        refs = []
        for member in config.members:
            existing = client.call("VM.get_by_name_label", member.name)
            if existing:
                client.names[existing[0]] = member.name
                if member.record is not None:
                    note(f"Domain '{member.name}' is already defined; it joins as it is ({member.entry} is not read "
                         "again).")
                refs.append(existing[0])
            elif member.record is None:
                refs.append(find_ref(client, member.name))  # says the domain does not exist
            else:
                ref = domain.define(client, member.record)
                defined.append(ref)
                refs.append(ref)
        group = client.call("VM_group.create", {**config.record(), "VMs": refs})
        record = client.call("VM_group.get_record", group)
        names = ", ".join(client.names.get(r, r) for r in refs) or "no members"
        print(f"Group '{config.name}' created (id {record['group_id']}) with {names}.")
        operate(client, args.command, "start", group, record, bool(args.paused))
    except Interrupted:
        note(f"Group '{config.name}' stays defined; the start goes on on the server.")
        raise
    except (XenAPIFailure, CliError):  # refused, or a member failed (the server rolled the others back)
        _undo_create(client, config.name, group, defined)
        raise
    return 0


def _undo_create(client: Client, name: str, group: str | None, defined: list[str]) -> None:
    left = []
    if group is not None:
        try:
            client.call("VM_group.destroy", group)
        except (XenAPIFailure, CliError):
            left.append(f"group '{name}' ('xm grp-delete {shlex.quote(name)}')")
    for ref in defined:
        try:
            client.call("VM.destroy", ref)
        except (XenAPIFailure, CliError):
            left.append(f"domain '{client.names.get(ref, ref)}' ('xm delete')")
    if left:
        note("Note: these stay and can be removed by hand: " + "; ".join(left) + ".")
    elif group is not None or defined:
        note(f"Group '{name}' was not created (what this command defined was removed again).")


def start(client: Client, args) -> int:
    """Start a group's members in ascending order (paused with -p); running members are left alone."""
    ref, record = find_group(client, args.group)
    return operate(client, args.command, "start", ref, record, bool(args.paused))


def delete(client: Client, args) -> int:
    """Remove a group; its domains stay as they are and go to Null-Group."""
    ref, record = find_group(client, args.group)
    client.call("VM_group.destroy", ref)
    vms = _vms(client)
    names = ", ".join(vms[r]["name_label"] for r in record["VMs"] if r in vms)
    print(f"Group '{record['name_label']}' deleted" + (f"; {names} are in {NULL_GROUP} now." if names else "."))
    return 0


def join(client: Client, args) -> int:
    """Move a domain into a group; it leaves the group it was in (a domain is in one group only)."""
    vm = find_ref(client, args.domain)
    name = client.call("VM.get_name_label", vm)
    client.names[vm] = name
    client.about["domain"] = name
    ref, record = find_group(client, args.group)
    old = client.call("VM.get_groups", vm)
    old_name = client.call("VM_group.get_name_label", old[0]) if old else ""
    client.call("VM_group.add_VM", ref, vm)
    if old and old[0] != ref:
        print(f"Domain '{name}' joined group '{record['name_label']}' (it left '{old_name}').")
    else:
        print(f"Domain '{name}' is in group '{record['name_label']}'.")
    return 0


# -- reboot / save / restore / migrate ----------------------------------------------------------

def reboot(client: Client, args) -> int:
    """Reboot a group's members in ascending order (--hard: reset them, as 'xm reset' would)."""
    ref, record = find_group(client, args.group)
    return operate(client, args.command, "hard_reboot" if args.hard else "clean_reboot", ref, record)


def save(client: Client, args) -> int:
    """Save a group's running members (descending order) to DIR in the server's image directory;
    they halt.

    DIR is relative to the server's image directory (xend-ext serve --image-dir), or absolute
    inside it; the server makes it if missing. It receives one image per member and group.sxp
    (replaced only with -f); 'xm grp-restore DIR' brings the group back, here or on another server
    that can read DIR.
    """
    ref, record = find_group(client, args.group)
    path = args.directory
    operate(client, args.command, "save", ref, record, path, bool(args.force),
            title=f"Group '{record['name_label']}' saved to {path} in the server's image directory:")
    return 0


def restore(client: Client, args) -> int:
    """Restore a group saved with 'xm grp-save' from DIR in the server's image directory
    (ascending order).

    The group is made again if this server does not have it, and members this server does not
    know are defined from their images. -p leaves the members paused.
    """
    path = args.directory
    op = OPS["restore"]
    result, failed = run_task(client, "VM_group.restore", path, bool(args.paused), label="restoring group")
    if failed:
        report(client, args.command, op, f"The group saved in {path} was not restored:", {},
               result if isinstance(result, dict) else None, failed)
        return 1
    if not isinstance(result, str) or not result.startswith("OpaqueRef:"):
        raise CliError(f"the server restored the group in {path} but did not say which group it is")
    record = client.call("VM_group.get_record", result)
    client.about["group"] = record["name_label"]
    vms = _vms(client)
    members = {r: vms[r] for r in record["VMs"] if r in vms}
    report(client, args.command, op, f"Group '{record['name_label']}' restored from {path}:", members, None, None)
    return 0


def migrate(client: Client, args) -> int:
    """Move a group's running members to another xend-ext server (ascending order).

    They run there, gathered in a group of the same name (made there if missing), and are gone
    from here. URL is the other server's Xen-API address, http(s)://[user:password@]host:port/.
    """
    url = args.destination if "://" in args.destination else "http://" + args.destination
    ref, record = find_group(client, args.group)
    operate(client, args.command, "migrate", ref, record, url, bool(args.live),
            title=f"Group '{record['name_label']}' migrated to {_public(url)}:")
    return 0


# -- the table -------------------------------------------------------------------------------

GROUP = arg("group", metavar="GRP", help="group name, uuid or group ID")
PAUSED = arg("-p", "--paused", action="store_true", help="leave the members paused")
DIRECTORY = arg("directory", metavar="DIR", help="directory in the server's image directory")

COMMANDS = {
    "grp-create": (create, [
        arg("config", metavar="CFG", help="group config file: the name as given, else searched in --path"),
        arg("vars", nargs="*", metavar="VAR=VALUE", help="set or override a config variable (members=a,b for a "
                                                          "list)"),
        PAUSED,
        arg("-n", "--dryrun", action="store_true", help="print the group and its members' records (JSON) and stop"),
        arg("--path", default=group_config.DEFAULT_PATH,
            help="colon-separated directories searched for CFG (default %(default)s)"),
        arg("--domain-path", default=domain_config.DEFAULT_PATH,
            help="directories searched for member domain configs not found next to CFG (default %(default)s)"),
    ]),
    "grp-new": (new, [
        arg("name", metavar="NAME", help="the new group's name (unique)"),
        arg("domains", nargs="*", metavar="DOMAIN", help="domains that join it (name, uuid or domain id)"),
        arg("--description", help="the group's description"),
        arg("--placement", choices=group_config.PLACEMENTS, default="normal",
            help="anti_affinity spreads the members over hosts where there are several (default normal)"),
    ]),
    "grp-list": (list_groups, [
        arg("groups", nargs="*", metavar="GRP", help="only these groups"),
        Exclusive([arg("-l", "--long", action="store_true", help="one SXP per group, with each member's order, "
                                                                  "depends_on and state"),
                   arg("--json", action="store_true", help="the Xen-API records with the members, as JSON")]),
    ]),
    "grp-start": (start, [GROUP, PAUSED]),
    "grp-shutdown": (_simple("clean_shutdown", "Shut a group's members down, in descending order."), [GROUP]),
    "grp-destroy": (_simple("hard_shutdown", "Stop a group's members at once (as 'xm destroy'), in descending "
                                             "order; the group stays (see grp-delete)."), [GROUP]),
    "grp-delete": (delete, [GROUP]),
    "grp-reboot": (reboot, [GROUP, arg("--hard", action="store_true", help="reset the members instead")]),
    "grp-pause": (_simple("pause", "Pause a group's running members, in descending order."), [GROUP]),
    "grp-unpause": (_simple("unpause", "Unpause a group's paused members, in ascending order."), [GROUP]),
    "grp-suspend": (_simple("suspend", "Suspend a group's members, in descending order ('xm grp-resume' brings "
                                       "them back)."), [GROUP]),
    "grp-resume": (_simple("resume", "Resume a group's suspended members, in ascending order (paused with -p).",
                           paused=True), [GROUP, PAUSED]),
    "grp-save": (save, [GROUP, DIRECTORY, arg("-f", "--force", action="store_true",
                                               help="replace the files of an earlier save")]),
    "grp-restore": (restore, [DIRECTORY, PAUSED]),
    "grp-join": (join, [arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id"), GROUP]),
    "grp-migrate": (migrate, [GROUP, arg("destination", metavar="URL", help="http(s)://[user:password@]host:port/ "
                                                                       "of the other xend-ext server"),
                              arg("-l", "--live", action="store_true", help="keep the members running while they "
                                                                            "are copied")]),
}
