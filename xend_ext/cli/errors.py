"""Xen-API failures turned into sentences that say what went wrong and what to do.

An error code alone rarely tells a user what to type next; the sentence is built from the error's
parameters, the domain names the command looked up and the command that failed, so that
``VM_BAD_POWER_STATE [ref, halted, running]`` from ``xm delete web`` reads "Domain 'web' is running;
it must be halted for that. Stop it first with 'xm shutdown web'."
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from .connection import XenAPIFailure
from .sdom import pool_mismatch

MIB = 1 << 20


@dataclass
class Context:
    """What the failing command was doing."""

    command: str = ""
    names: dict[str, str] = field(default_factory=dict)
    #: what else the command is about: ``pool`` (its name), ``cpu`` (a CPU number), ``domain``
    #: (whose pool it is), ``domains`` (running in the pool), ``free_with`` (a command that frees
    #: enough CPUs)
    about: dict[str, str] = field(default_factory=dict)

    def name(self, ref: str) -> str:
        """A VM's name when the command saw it, else the reference as given."""
        if ref in self.names:
            return self.names[ref]
        bare = ref.removeprefix("OpaqueRef:")
        return self.names.get(bare, ref)


# what to do, by (state needed, state it is in); {n} is the domain's name for a command line
ADVICE = {
    ("halted", "running"): "Stop it first with 'xm shutdown {n}'.",
    ("halted", "paused"): "Stop it first with 'xm destroy {n}'.",
    ("halted", "suspended"): "Resume it with 'xm resume {n}', or discard its saved state with 'xm destroy {n}'.",
    ("running", "halted"): "Start it first with 'xm start {n}'.",
    ("running", "suspended"): "Resume it first with 'xm resume {n}'.",
    ("running", "paused"): "Unpause it first with 'xm unpause {n}'.",
    ("paused", "running"): "Pause it first with 'xm pause {n}'.",
    ("paused", "halted"): "Start it paused with 'xm start -p {n}'.",
    ("paused", "suspended"): "Resume it paused with 'xm resume -p {n}'.",
    ("suspended", "running"): "Suspend it first with 'xm suspend {n}'.",
    ("suspended", "paused"): "Suspend it first with 'xm suspend {n}'.",
    ("suspended", "halted"): "Start it with 'xm start {n}'.",
}
#: the allocation commands (API.md §8) and their virsh aliases: --dynamic needs a running domain
ALLOC_COMMANDS = ("mem-set", "setmem", "mem-max", "setmaxmem", "vcpu-set", "setvcpus")
DYNAMIC_COMMANDS = ("sched-credit", "vcpu-pin", *ALLOC_COMMANDS)


def _bad_power_state(params: list[str], ctx: Context) -> str:
    ref, needed, actual = (params + ["", "", ""])[:3]
    name = ctx.name(ref)
    choices = [s for s in needed.split("/") if s]
    needed_text = " or ".join(choices) or "in another state"
    first = "Domain" if actual else "The domain"
    sentence = f"{first} '{name}' is {actual or 'in the wrong state'}; it must be {needed_text} for that."
    quoted = shlex.quote(name)
    if ctx.command in DYNAMIC_COMMANDS and actual in ("halted", "suspended"):
        return (f"{sentence} A --dynamic change needs a running domain; use --static to change its stored "
                f"definition for the next start, or start it first with 'xm start {quoted}'.")
    if ctx.command == "shutdown" and actual == "paused":
        return f"{sentence} Unpause it first with 'xm unpause {quoted}', or stop it at once with 'xm destroy {quoted}'."
    if ctx.command in ("start", "create") and actual in ("running", "paused"):
        return f"Domain '{name}' is already {actual}."
    if ctx.command == "unpause" and actual == "running":
        return f"Domain '{name}' is already running; only a paused domain can be unpaused."
    if ctx.command == "resume" and actual in ("running", "paused"):
        return f"Domain '{name}' is already {actual}; only a suspended domain can be resumed."
    advice = ADVICE.get((choices[0] if choices else "", actual))
    return f"{sentence} {advice.format(n=quoted)}" if advice else sentence


def _mib(text: str) -> str:
    try:
        return f"{int(text) // MIB} MiB"
    except ValueError:
        return text


def _not_enough_memory(params: list[str], ctx: Context) -> str:
    needed, free = (params + ["?", "?"])[:2]
    return (f"the host has too little free memory: {_mib(needed)} needed, {_mib(free)} free. Stop or shrink "
            "another domain ('xm list' shows what each has), or give this one less memory.")


def _migrate_failed(params: list[str], ctx: Context) -> str:
    vm, _source, destination, reason = (params + ["", "", "", ""])[:4]
    where = f" to {destination}" if destination else ""
    return (f"migrating '{ctx.name(vm)}'{where} failed: {reason or 'no reason given'}. The domain still runs "
            "here; check that the destination server is reachable and has room, then try again.")


def _invalid_value(params: list[str], ctx: Context) -> str:
    what, value = (params + ["", ""])[:2]
    if what == "path":
        return (f"'{value}' on the server host is not a readable, undamaged domain image; give a file "
                "'xm save' wrote (the path is on the server host).")
    return f"{what} cannot be '{value}'"


def _value_not_supported(params: list[str], ctx: Context) -> str:
    what, value, reason = (params + ["", "", ""])[:3]
    reason = reason.replace("pass overwrite=true to replace it", "give -f to replace it")
    if what == "path":
        return f"the path '{value}' cannot be used on the server host: {reason}"
    if ctx.command in ALLOC_COMMANDS:
        sentence = _allocation_refused(what, value, reason, ctx)
        if sentence:
            return sentence
    if "is not in the VM's pool" in reason:
        return f"{what} cannot be {value}: {reason}; pin it to CPUs of that pool ('xm cpupool-list -c' shows them)"
    group = _group_value_refused(what, value, reason, ctx)
    if group:
        return group
    return f"{what} cannot be {value}: {reason}"


def _the_domain(ctx: Context) -> str:
    """The one domain the command is about, for a sentence and a suggested command line."""
    if ctx.about.get("domain"):
        return ctx.about["domain"]
    names = set(ctx.names.values())
    return names.pop() if len(names) == 1 else "DOMAIN"


def _allocation_refused(what: str, value: str, reason: str, ctx: Context) -> str:
    """mem-set, mem-max and vcpu-set: the bound that was hit, in MiB or vCPUs, and what to type next."""
    name = _the_domain(ctx)
    n = shlex.quote(name)
    mode = ctx.about.get("mode", "")
    flag = f" --{mode}" if mode in ("static", "perm") else ""
    bound = re.search(r"(\d+)\)?(?:;.*)?$", reason)
    limit = bound.group(1) if bound else ""
    if reason == "must be at least 1":
        if what.startswith("VCPUs"):
            return f"a domain needs at least 1 vCPU, not {value}"
        return f"a domain needs at least 1 MiB of memory, not {_mib(value)}"
    if what == "memory" and reason.startswith("the domain's maximum is"):
        return (f"domain '{name}' cannot have {_mib(value)} now: its running maximum is {_mib(limit)}. Raise the "
                f"maximum first with 'xm mem-max {n} {int(value) // MIB}{flag}'")
    if what == "memory_target" and reason.startswith("above memory_static_max"):
        if ctx.command in ("mem-max", "setmaxmem"):
            return (f"the stored maximum of domain '{name}' cannot be {_mib(limit)}: it is to start with "
                    f"{_mib(value)}. Lower that first with 'xm mem-set {n} {int(limit) // MIB}{flag or ' --static'}'")
        return (f"domain '{name}' cannot start with {_mib(value)}: its stored maximum is {_mib(limit)}. Raise it "
                f"first with 'xm mem-max {n} {int(value) // MIB}{flag or ' --static'}'")
    if what == "memory_max" and reason.startswith("below the domain's current memory"):
        return (f"the maximum of domain '{name}' cannot be {_mib(value)}: it has {_mib(limit)} now. Lower its "
                f"memory first with 'xm mem-set {n} {int(value) // MIB}{flag}'")
    if what in ("VCPUs", "VCPUs_at_startup") and limit:
        return (f"domain '{name}' cannot have {value} vCPUs: it has at most {limit} (its VCPUs_max, set when it "
                "was defined; 'xm list -l' shows maxvcpus)")
    if what.startswith("memory"):  # any other memory bound: the byte counts of the wire said in MiB
        in_mib = re.sub(r"\b\d{6,}\b", lambda m: _mib(m.group()), reason)
        return f"domain '{name}' cannot have {_mib(value)} of memory: {in_mib}"
    return ""


# -- CPU pools: the codes name neither the pool nor the CPU, the command does ------------------

def _pool(ctx: Context) -> str:
    return f'pool "{ctx.about["pool"]}"' if ctx.about.get("pool") else "the pool"


def _pool_arg(ctx: Context) -> str:
    """The pool as typed in a suggested command."""
    return shlex.quote(ctx.about["pool"]) if ctx.about.get("pool") else "POOL"


def _pool_bad_state(params: list[str], ctx: Context) -> str:
    state = params[0] if params else ""
    pool, arg = _pool(ctx), _pool_arg(ctx)
    if state == "activated":
        if ctx.command == "cpupool-delete":
            return f"{pool} is active; run 'xm cpupool-destroy {arg}' first"
        if ctx.command in ("cpupool-start", "cpupool-create"):
            return f"{pool} is already active"
        return f"{pool} is active and this can only be changed while it is not; 'xm cpupool-destroy {arg}' " \
               "deactivates it"
    if state == "deactivated":
        if ctx.command == "cpupool-destroy":
            return f"{pool} is not active"
        if ctx.command in ("cpupool-cpu-add", "cpupool-cpu-remove"):
            return f"{pool} is not active; only an active pool has CPUs to add or remove. Start it with " \
                   f"'xm cpupool-start {arg}'"
        if ctx.command == "cpupool-migrate":
            return f"{pool} is not active; start it first with 'xm cpupool-start {arg}' (a halted domain may " \
                   "be moved to an inactive pool; it then starts there once the pool is active)"
        if ctx.about.get("domain") and ctx.about.get("pool"):
            domain = shlex.quote(ctx.about["domain"])
            return f"domain '{ctx.about['domain']}' starts in {pool}, which is not active; start the pool with " \
                   f"'xm cpupool-start {arg}', or move the domain to an active one with " \
                   f"'xm cpupool-migrate {domain} Pool-0'"
        if not ctx.about.get("pool"):
            return "the domain's CPU pool is not active; start it with 'xm cpupool-start POOL' ('xm list -l' " \
                   "shows the domain's pool_name, 'xm cpupool-list' which pools are active)"
        return f"{pool} is not active; start it with 'xm cpupool-start {arg}'"
    if state == "in use":
        running = ctx.about.get("domains")
        which = f" ({running})" if running else ""
        return f"domains still run in {pool}{which}; shut them down, or move them to another pool with " \
               f"'xm cpupool-migrate DOMAIN Pool-0', first"
    return f"{pool} is in the wrong state ({state or 'unknown'}) for that"


def _insufficient_cpus(params: list[str], ctx: Context) -> str:
    needed, free = (params + ["?", "?"])[:2]
    plural = "" if needed == "1" else "s"
    verb = "is" if free == "1" else "are"
    if ctx.command not in ("cpupool-start", "cpupool-create", "cpupool-numa-split") and free == "0":
        # a domain starting or moving into an active pool that has no CPU left
        arg = _pool_arg(ctx)
        return (f"{_pool(ctx)} has no CPUs; give it one with 'xm cpupool-cpu-add {arg} N' (free one first with "
                "'xm cpupool-cpu-remove Pool-0 N' if 'xm info' shows no free_cpus)")
    sentence = f"{_pool(ctx)} needs {needed} CPU{plural} but only {free} {verb} free"
    if ctx.about.get("free_with"):
        return (f"{sentence}; free enough first with '{ctx.about['free_with']}' ('xm cpupool-list -c' shows "
                "which pool has each CPU), or ask for fewer (cpus=N)")
    return (f"{sentence}; free some from another pool first with 'xm cpupool-cpu-remove Pool-0 N' ('xm "
            "cpupool-list -c' shows which pool has each CPU), or ask for fewer (cpus=N)")


def _invalid_cpu(params: list[str], ctx: Context) -> str:
    message = params[0] if params else ""
    cpu = ctx.about.get("cpu", "")
    owner = re.match(r'cpu already assigned to pool "(.*)"$', message)
    if owner and cpu:
        other = owner.group(1)
        return (f"CPU {cpu} is already in pool \"{other}\"; take it out there first with "
                f"'xm cpupool-cpu-remove {shlex.quote(other)} {cpu}'")
    if message == "CPU not assigned to pool" and cpu:
        return f"CPU {cpu} is not in {_pool(ctx)}; 'xm cpupool-list -c' shows which pool has each CPU"
    return f"invalid CPU: {message or 'no reason given'} ('xm info' shows the host's nr_cpus)"


def _last_cpu(params: list[str], ctx: Context) -> str:
    cpu = ctx.about.get("cpu", "")
    what = f"CPU {cpu} is the last CPU of {_pool(ctx)}" if cpu else f"that is the last CPU of {_pool(ctx)}"
    if ctx.about.get("pool") == "Pool-0":
        return f"{what}, where Domain-0 always runs; Pool-0 keeps at least one CPU"
    pool = ctx.about.get("pool", "POOL")
    return (f"{what}; an active pool keeps at least one CPU (seed 000). 'xm cpupool-destroy "
            f"{shlex.quote(pool)}' frees them all once no domain runs there")


def _parameter_error(params: list[str], ctx: Context) -> str:
    message = params[0] if params else ""
    taken = re.match(r'Pool name "(.*)" already exists$', message)
    if taken:
        name = taken.group(1)
        if ctx.command == "cpupool-rename":
            return f'a pool called "{name}" already exists; choose another name'
        return (f'a pool called "{name}" already exists; choose another name (name=... on the command line), '
                f"or remove the old one with 'xm cpupool-delete {shlex.quote(name)}'")
    if message == "ncpu":
        return "a pool needs at least 1 CPU (ncpu)"
    if message.startswith("Invalid Pool Name"):
        return message
    return f"invalid pool setting: {message or 'no reason given'}"


def _unknown_sched(params: list[str], ctx: Context) -> str:
    return f'unknown scheduler for {_pool(ctx)}: use credit or credit2 (sched = "credit" in the pool config)'


_PINNED_ALONE = re.compile(r"^VM (.+) could run only on pCPUs reserved to others \(pCPU (\d+) among them\)")
_PIN_ON_RESERVED = re.compile(r"^pCPUs (\S+) are reserved to other VMs")
_START_ON_RESERVED = re.compile(r"^cpumap(\d+)=(\S+) lies on pCPUs reserved to other VMs")


def _pcpus(text: str) -> str:
    """``pCPU 4, which is`` or ``pCPUs 4-5, which are``."""
    if text.isdigit():
        return f"pCPU {text}, which is"
    return f"pCPUs {text}, which are"


def _occupancy_refused(reason: str, ctx: Context) -> str:
    """cpuoccupy (xm cpu-occupy) refusals: who is in the way and how to get it out of the way."""
    if m := _PINNED_ALONE.match(reason):
        name, cpu = m.groups()
        quoted = shlex.quote(name)
        return (f"pCPU {cpu} cannot be reserved: domain '{name}' could then run only on reserved pCPUs "
                f"and would have nowhere to run. Pin it elsewhere first with 'xm vcpu-pin {quoted} VCPU CPUS "
                f"--perm' ('xm cpu-policy {quoted}' shows its pins), then reserve the pCPU again")
    if m := _PIN_ON_RESERVED.match(reason):
        cpus = m.group(1)
        are, them = (f"pCPU {cpus} is", "it") if cpus.isdigit() else (f"pCPUs {cpus} are", "them")
        return (f"{are} reserved to other domains (xm cpu-occupy); pin the vCPU to other pCPUs, or free "
                f"{them} first with 'xm cpu-occupy PCPU --clear' ('xm cpu-occupy' lists the reservations)")
    if m := _START_ON_RESERVED.match(reason):
        vcpu, cpus = m.groups()
        name = _the_domain(ctx)
        return (f"vCPU {vcpu} of domain '{name}' is pinned to {_pcpus(cpus)} reserved to other domains "
                f"(xm cpu-occupy). Pin it elsewhere with 'xm vcpu-pin {shlex.quote(name)} {vcpu} CPUS --static', "
                "or free the pCPU with 'xm cpu-occupy PCPU --clear' ('xm cpu-occupy' lists the reservations)")
    return ""


def _not_allowed(params: list[str], ctx: Context) -> str:
    reason = params[0] if params else "the operation is not allowed"
    occupancy = _occupancy_refused(reason, ctx)
    if occupancy:
        return occupancy
    if reason == "could not move Domain-0":
        return "Domain-0 always runs in Pool-0; it cannot be moved to another pool"
    if reason.startswith("Pool-0 cannot be"):
        return f"{reason}: it is the host's boot pool, where Domain-0 runs"
    return _group_refused(reason, ctx) or reason


# -- VM groups (xm grp-*) ------------------------------------------------------------------------

_DEFAULT_GROUP = re.compile(r"^(Group-0|Null-Group) cannot be (destroyed|renamed)$")
_WAITS_FOR = re.compile(r"^(.+) depends on (.+), which is not running$")


def _group_arg(ctx: Context) -> str:
    return shlex.quote(ctx.about["group"]) if ctx.about.get("group") else "GRP"


def _group_refused(reason: str, ctx: Context) -> str:
    """The membership rules of groups and the ordering of their members, and what to type next."""
    if reason == "Group-0 holds control domains only":
        return ("Group-0 holds Domain-0 (the control domain) only; put the domain in another group ('xm grp-list' "
                "lists them, 'xm grp-new NAME DOMAIN' makes one)")
    if reason == "Domain-0 stays in Group-0":
        return "Domain-0 always stays in Group-0; it cannot be put in another group"
    if _DEFAULT_GROUP.match(reason):
        return f"{reason}: it is one of the two default groups"
    if reason == "the members' depends_on form a cycle":
        return (f"the members' depends_on form a cycle, so none of them can go first; 'xm grp-list -l "
                f"{_group_arg(ctx)}' shows what each depends on")
    if m := _WAITS_FOR.match(reason):
        return (f"domain '{m[1]}' depends on '{m[2]}', which is not running; start it first with "
                f"'xm start {shlex.quote(m[2])}'")
    return ""


def _group_value_refused(what: str, value: str, reason: str, ctx: Context) -> str:
    if what == "directory":
        if "image directory" in reason or "replace it" in reason:
            return f"the directory '{value}' cannot be used on the server host: {reason}"
        if reason.startswith("no readable") or reason.endswith("is missing"):
            return f"'{value}' on the server host holds no complete group saved by 'xm grp-save' ({reason})"
        return (f"the directory '{value}' cannot be used: it must be an existing directory on the server host "
                "(create it there first)")
    if what == "name_label" and reason == "another group has this name":
        return (f"a group called '{value}' already exists; choose another name, or remove that group with "
                f"'xm grp-delete {shlex.quote(value)}'")
    if what == "name_label" and reason == "another group here has this name":
        return (f"another group called '{value}' exists on this server; rename or remove it ('xm grp-delete "
                f"{shlex.quote(value)}') to restore the saved one")
    if what == "vm" and reason == "not a member of this group":
        return f"domain '{ctx.name(value)}' is not in group '{ctx.about.get('group', '?')}'"
    return ""


def _partially_failed(params: list[str], ctx: Context) -> str:
    operation, *refs = params or ["the group operation"]
    names = ", ".join(ctx.name(ref) for ref in refs) or "a member"
    return (f"{operation} failed for {names}; the members already changed were rolled back where that is "
            f"possible ('xm grp-list -l {_group_arg(ctx)}' shows each member's state)")


Template = str | Callable[[list[str], Context], str]

MESSAGES: dict[str, Template] = {
    "SESSION_AUTHENTICATION_FAILED": "the user name or password was refused; check --user/--password, "
                                     "XM_USER/XM_PASSWORD or ~/.xm.conf",
    "SESSION_INVALID": "the session expired; run the command again",
    "HANDLE_INVALID": "no {0} {1} exists (it may have been deleted); list them again",
    "UUID_INVALID": "no {0} has the uuid {1}",
    "RBAC_PERMISSION_DENIED": "your role may not do {0}; log in as a user with more rights",
    "MESSAGE_METHOD_UNKNOWN": "the server does not know {0}; it may be older than this xm",
    "MESSAGE_PARAMETER_COUNT_MISMATCH": "the server expects {1} arguments for {0}, not {2}; it may be a "
                                        "different version than this xm",
    "NOT_IMPLEMENTED": "this server's backend cannot do that ({0} is missing)",
    "OPERATION_NOT_ALLOWED": _not_allowed,
    "VALUE_NOT_SUPPORTED": _value_not_supported,
    "FIELD_TYPE_ERROR": "{0} has the wrong type",
    "MAP_DUPLICATE_KEY": "{3} is already set in {1}; remove it first",
    "INTERNAL_ERROR": "the server failed unexpectedly ({0}); please report it",
    "VM_BAD_POWER_STATE": _bad_power_state,
    "HOST_NOT_ENOUGH_FREE_MEMORY": _not_enough_memory,
    "VM_MIGRATE_FAILED": _migrate_failed,
    "INVALID_VALUE": _invalid_value,
    "TASK_CANCELLED": "the operation was cancelled before it finished",
    "EVENT_SUBSCRIPTION_PARSE_FAILURE": "'{0}' is not an event class of this server; name classes such as VM, "
                                        "VM_metrics, task or host, or none to see every class",
    "SESSION_NOT_REGISTERED": "this session is not registered for events",
    "EVENTS_LOST": "the server dropped events this client was too slow to read",
    "POOL_BAD_STATE": _pool_bad_state,
    "INSUFFICIENT_CPUS": _insufficient_cpus,
    "UNKOWN_SCHED_POLICY": _unknown_sched,  # sic, the Xen-API document's spelling
    "UNKNOWN_SCHED_POLICY": _unknown_sched,
    "INVALID_CPU": _invalid_cpu,
    "INVAILD_CPU": _invalid_cpu,  # xend's spelling (reference/xen-anchors.md §10)
    "LAST_CPU_NOT_REMOVEABLE": _last_cpu,
    "PARAMETER_ERROR": _parameter_error,
    "SCHED_DOMAIN_POOL_MISMATCH": pool_mismatch,
    "TOO_MANY_GROUPS": "a domain is in exactly one group; give one group (none puts it in Null-Group)",
    "OPERATION_PARTIALLY_FAILED": _partially_failed,
}


def explain(failure: XenAPIFailure, command: str = "", names: dict[str, str] | None = None,
            about: dict[str, str] | None = None) -> str:
    """The sentence for a failure; ``command``, ``names`` and ``about`` let it name the domain or pool
    and the next step."""
    template = MESSAGES.get(failure.code)
    fallback = f"{failure.code} {' '.join(failure.params)}".strip()
    if template is None:
        return fallback
    if callable(template):
        return template(list(failure.params), Context(command, dict(names or {}), dict(about or {})))
    try:
        return template.format(*failure.params)
    except IndexError:
        return fallback
