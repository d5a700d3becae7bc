"""Scheduling domain commands: ``xm sdom-*`` (API.md §7, the "nemesis" proposal of seed 001).

A scheduling domain makes several domains share one *master* domain's timeslices: the master's
weight and cap apply to the master and its members together, as one scheduling entity. Cap a
domain at 10, add a second domain to its scheduling domain, and both together get 10 % of one pCPU.

An SDOM argument is a scheduling domain's name or uuid, or the name (uuid, domid) of its master
domain, so ``xm sdom-create web`` followed by ``xm sdom-add web stub`` works without naming the
scheduling domain at all. A DOMAIN argument is a domain as every xm command takes it.
"""

from __future__ import annotations

import shlex
import weakref

from .. import sxp
from .args import Exclusive, arg
from .client import Client
from .connection import CliError, XenAPIFailure
from .sxpout import dumps_json, pretty
from .vms import UUID, Domain, all_domains, find_ref

NULL = "OpaqueRef:NULL"
LIST_HEADER = "%-20s %-20s %6s %5s  %s" % ("Name", "Master", "Weight", "Cap", "Members")  # noqa: UP031 xm's style
LIST_ROW = "%-20s %-20s %6d %5d  %s"
HINT = "'xm sdom-list' lists them; the master domain's name works too"


# -- lookups ---------------------------------------------------------------------------------

def _records(client: Client) -> dict[str, dict]:
    return client.call("sched_domain.get_all_records")


def _vm_name(client: Client, ref: str) -> str:
    """A VM's name, asked once per command (errors carrying its ref can then name it)."""
    if ref not in client.names:
        try:
            client.names[ref] = client.call("VM.get_name_label", ref)
        except XenAPIFailure:
            return ref
    return client.names[ref]


def find_vm(client: Client, text: str) -> str:
    """The VM a DOMAIN argument names, with its real name noted (the text may be a uuid or domid)."""
    ref = find_ref(client, text)
    client.names[ref] = client.call("VM.get_name_label", ref)
    return ref


def find_sdom(client: Client, text: str) -> tuple[str, dict]:
    """The scheduling domain an SDOM argument names: its name, its uuid, or its master domain.

    When the text names two different scheduling domains (one by its name, another through its
    master's name), it is refused rather than guessed.
    """
    records = _records(client)
    found: dict[str, str] = {}  # sched_domain ref -> how the text named it
    for ref, rec in records.items():
        if rec["name_label"] == text:
            found[ref] = "by name"
        elif UUID.match(text) and rec["uuid"] == text.lower():
            found[ref] = "by uuid"
    master_of = None
    try:
        vm = find_vm(client, text)
    except CliError:
        vm = None
    if vm is not None:
        for ref, rec in records.items():
            if rec["master"] == vm:
                master_of = ref
                found.setdefault(ref, "by its master")
    if len(found) > 1:
        listed = ", ".join(sorted(f"'{records[r]['name_label']}' ({r.removeprefix('OpaqueRef:')})" for r in found))
        raise CliError(f"'{text}' names more than one scheduling domain: {listed}; name it by uuid instead ({HINT}).")
    if found:
        (ref,) = found
        return ref, records[ref]
    if vm is not None and master_of is None:
        name = _vm_name(client, vm)
        current = next((r for r, rec in records.items() if vm in rec["members"]), None)
        if current is not None:
            sdom = records[current]["name_label"]
            raise CliError(f"Domain '{name}' is a member, not the master, of scheduling domain '{sdom}'; "
                           f"name the scheduling domain ('{sdom}') or its master "
                           f"('{_vm_name(client, records[current]['master'])}') instead.")
        raise CliError(f"Domain '{name}' is not the master of a scheduling domain; make it one with "
                       f"'xm sdom-create {shlex.quote(name)}'.")
    raise CliError(f"Scheduling domain '{text}' does not exist ({HINT}).")


def _membership(records: dict[str, dict], vm: str) -> tuple[str, dict, str] | None:
    """(ref, record, "master" or "member") of the scheduling domain a VM is in, None if none."""
    for ref, rec in records.items():
        if rec["master"] == vm:
            return ref, rec, "master"
        if vm in rec["members"]:
            return ref, rec, "member"
    return None


# -- sentences for the scheduling domain errors ------------------------------------------------

def _already_in(client: Client, failure: XenAPIFailure, wanted: str = "") -> CliError:
    """VM_ALREADY_IN_SCHED_DOMAIN [vm, sched_domain]: say which and how to free it."""
    vm = failure.params[0] if failure.params else ""
    name = _vm_name(client, vm)
    where = _membership(_records(client), vm)
    if where is None:  # it left meanwhile, or the master was named twice in a record
        return CliError(f"Domain '{name}' is already in a scheduling domain.")
    ref, rec, role = where
    sdom = rec["name_label"]
    if ref == wanted:
        return CliError(f"Domain '{name}' is already {'the master' if role == 'master' else 'a member'} of "
                        f"scheduling domain '{sdom}'.")
    if role == "master":
        return CliError(f"Domain '{name}' is already the master of scheduling domain '{sdom}'; a domain is in at "
                        f"most one. Dissolve that one first with 'xm sdom-destroy {shlex.quote(sdom)}'.")
    return CliError(f"Domain '{name}' is already a member of scheduling domain '{sdom}'; a domain is in at most "
                    f"one. Take it out first with 'xm sdom-remove {shlex.quote(name)}'.")


def _pool_mismatch(client: Client, failure: XenAPIFailure) -> CliError:
    """SCHED_DOMAIN_POOL_MISMATCH [vm, pool]: the master's pool, and how to get there."""
    vm, pool = (list(failure.params) + ["", ""])[:2]
    name = _vm_name(client, vm)
    try:
        own = client.call("VM.get_pool_name", vm) or "Pool-0"
    except XenAPIFailure:
        own = "another pool"
    return CliError(f"Domain '{name}' is in pool '{own}', but a scheduling domain's domains all run in its "
                    f"master's pool '{pool}'. Move it there first with "
                    f"'xm cpupool-migrate {shlex.quote(name)} {shlex.quote(pool)}'.")


def pool_mismatch(params: list[str], ctx) -> str:
    """SCHED_DOMAIN_POOL_MISMATCH [vm, pool] from another command (xm cpupool-migrate, a pool_name
    change): an errors.py template, ``ctx`` being its Context. A member moves only with its master."""
    vm, pool = (list(params) + ["", ""])[:2]
    name = ctx.name(vm)
    return (f"domain '{name}' is in a scheduling domain, whose domains all run in its master's pool "
            f"'{pool}'; moving the master with 'xm cpupool-migrate MASTER POOL' moves them all ('xm sdom-list' "
            f"shows the masters), or take it out first with 'xm sdom-remove {shlex.quote(name)}'")


def _explained(client: Client, failure: XenAPIFailure, wanted: str = "") -> Exception:
    if failure.code == "VM_ALREADY_IN_SCHED_DOMAIN":
        return _already_in(client, failure, wanted)
    if failure.code == "SCHED_DOMAIN_POOL_MISMATCH":
        return _pool_mismatch(client, failure)
    return failure  # the generic sentences of errors.py


# -- commands ----------------------------------------------------------------------------------

def create(client: Client, args) -> int:
    """Make a domain the master of a new scheduling domain.

    Domains added to it with 'xm sdom-add' then share the master's timeslices: its weight and cap
    apply to all of them together. The scheduling domain is called like its master unless --name
    says otherwise.
    """
    master = find_vm(client, args.master)
    record = {"master": master}
    if args.name is not None:
        if not args.name:
            raise CliError("a scheduling domain's name cannot be empty.")
        record["name_label"] = args.name
    try:
        ref = client.call("sched_domain.create", record)
    except XenAPIFailure as exc:
        raise _explained(client, exc) from None
    name = client.call("sched_domain.get_name_label", ref)
    print(f"Scheduling domain '{name}' created with master '{_vm_name(client, master)}'.")
    return 0


def add(client: Client, args) -> int:
    """Add a domain to a scheduling domain: it then shares the master's timeslices.

    SDOM is the scheduling domain's name or uuid, or its master domain. The domain must be in the
    master's CPU pool and in no other scheduling domain.
    """
    ref, _rec = find_sdom(client, args.sdom)
    vm = find_vm(client, args.domain)
    try:
        client.call("sched_domain.add_member", ref, vm)
    except XenAPIFailure as exc:
        raise _explained(client, exc, ref) from None
    return 0


def remove(client: Client, args) -> int:
    """Take a domain out of the scheduling domain it is a member of: it is scheduled on its own again."""
    vm = find_vm(client, args.domain)
    name = _vm_name(client, vm)
    where = _membership(_records(client), vm)
    if where is None:
        raise CliError(f"Domain '{name}' is not in a scheduling domain.")
    ref, rec, role = where
    sdom = rec["name_label"]
    if role == "master":
        raise CliError(f"Domain '{name}' is the master of scheduling domain '{sdom}' and cannot leave it; "
                       f"dissolve it with 'xm sdom-destroy {shlex.quote(sdom)}'.")
    try:
        client.call("sched_domain.remove_member", ref, vm)
    except XenAPIFailure as exc:
        if exc.code == "VALUE_NOT_SUPPORTED":  # it left meanwhile
            raise CliError(f"Domain '{name}' is not in a scheduling domain.") from None
        raise
    return 0


def destroy(client: Client, args) -> int:
    """Dissolve a scheduling domain: the master and its members are scheduled on their own again.

    SDOM is the scheduling domain's name or uuid, or its master domain. The domains themselves are
    not touched.
    """
    ref, _rec = find_sdom(client, args.sdom)
    client.call("sched_domain.destroy", ref)
    return 0


# -- list --------------------------------------------------------------------------------------

def _usage(d: Domain | None) -> float:
    """The share of one pCPU a domain's vCPUs get together now (0 when it does not run)."""
    if d is None or not d.live or not d.metrics:
        return 0.0
    return sum(float(v) for v in d.metrics.get("VCPUs_utilisation", {}).values())


def _describe(ref: str, rec: dict, domains: dict[str, Domain]) -> dict:
    """What every listing shows of one scheduling domain, names instead of refs."""
    master = domains.get(rec["master"])
    members = sorted((domains[m] for m in rec["members"] if m in domains), key=lambda d: d.name)
    weight, cap = master.sched() if master is not None else (256, 0)
    everyone = ([master] if master is not None else []) + members
    return {"ref": ref, "rec": rec, "master": master.name if master else rec["master"],
            "members": [d.name for d in members], "weight": weight, "cap": cap,
            "utilisation": {d.name: _usage(d) for d in everyone}}


def _long_sxp(info: dict) -> sxp.Sxp:
    rec = info["rec"]
    total = sum(info["utilisation"].values())
    return [
        "sched_domain",
        ["uuid", rec["uuid"]],
        ["name", rec["name_label"]],
        ["description", rec["name_description"]],
        ["master", info["master"]],
        ["members", *info["members"]],
        ["weight", str(info["weight"])],
        ["cap", str(info["cap"])],
        ["utilisation", *([name, f"{share:.3f}"] for name, share in info["utilisation"].items())],
        ["total_utilisation", f"{total:.3f}"],
        ["other_config", *([k, v] for k, v in sorted(rec["other_config"].items()))],
    ]


def list_sdoms(client: Client, args) -> int:
    """List scheduling domains: master, the weight and cap in force, and members.

    Weight and cap are the master's, which apply to the whole scheduling domain: the values in
    force while the master runs, else its stored ones. -l shows one SXP per scheduling domain with
    each domain's current share of one pCPU (VM_metrics.VCPUs_utilisation, all its vCPUs
    together) and their total; --json the Xen-API records with the same additions.
    """
    records = _records(client)
    if args.sdom:
        ref, rec = find_sdom(client, args.sdom)
        records = {ref: rec}
    domains = {d.ref: d for d in all_domains(client)} if records else {}
    infos = sorted((_describe(ref, rec, domains) for ref, rec in records.items()),
                   key=lambda i: (i["rec"]["name_label"], i["rec"]["uuid"]))
    if args.json:
        print(dumps_json([{**i["rec"], "ref": i["ref"], "master_name": i["master"], "member_names": i["members"],
                           "weight": i["weight"], "cap": i["cap"], "utilisation": i["utilisation"]}
                          for i in infos]))
    elif args.long:
        for info in infos:
            print(pretty(_long_sxp(info)))
    else:
        print(LIST_HEADER)
        for i in infos:
            print(LIST_ROW % (i["rec"]["name_label"], i["master"], i["weight"], i["cap"],
                              ",".join(i["members"]) or "-"))
    return 0


# -- for xm sched-credit -------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[Client, dict[str, dict]] = weakref.WeakKeyDictionary()


def sdom_of(client: Client, vm_ref: str) -> str:
    """What ``xm sched-credit`` appends to a domain's row: the scheduling domain it shares.

    ``""`` for a domain in none (and on a server without scheduling domains); else
    ``"  sdom=NAME (master)"`` or ``"  sdom=NAME (member: MASTER's weight and cap apply)"``, since
    a member's own weight and cap are not in force while it is in a scheduling domain. The
    scheduling domains are read once per command, so a listing costs one extra call.
    """
    records = _CACHE.get(client)
    if records is None:
        try:
            records = _records(client)
        except XenAPIFailure as exc:
            if exc.code not in ("MESSAGE_METHOD_UNKNOWN", "RBAC_PERMISSION_DENIED"):
                raise
            records = {}
        _CACHE[client] = records
    where = _membership(records, vm_ref)
    if where is None:
        return ""
    _ref, rec, role = where
    if role == "master":
        return f"  sdom={rec['name_label']} (master)"
    return f"  sdom={rec['name_label']} (member: {_vm_name(client, rec['master'])}'s weight and cap apply)"


# -- the table -------------------------------------------------------------------------------

SDOM = arg("sdom", metavar="SDOM", help="scheduling domain name or uuid, or its master domain")
DOMAIN = arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id")

COMMANDS = {
    "sdom-create": (create, [
        arg("master", metavar="MASTER", help="the domain whose weight and cap the scheduling domain has"),
        arg("--name", metavar="NAME", help="the scheduling domain's name (default: the master's name)"),
    ]),
    "sdom-add": (add, [
        arg("sdom", metavar="MASTER_OR_SDOM", help="scheduling domain name or uuid, or its master domain"),
        DOMAIN,
    ]),
    "sdom-remove": (remove, [DOMAIN]),
    "sdom-destroy": (destroy, [
        arg("sdom", metavar="SDOM_OR_MASTER", help="scheduling domain name or uuid, or its master domain"),
    ]),
    "sdom-list": (list_sdoms, [
        arg("sdom", nargs="?", metavar="SDOM", help="only this scheduling domain (name, uuid or master)"),
        Exclusive([arg("-l", "--long", action="store_true", help="one SXP per scheduling domain, with utilisation"),
                   arg("--json", action="store_true", help="the Xen-API records, as JSON")]),
    ]),
}

