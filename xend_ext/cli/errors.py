"""Xen-API failures turned into sentences that say what went wrong and what to do.

An error code alone rarely tells a user what to type next; the sentence is built from the error's
parameters, the domain names the command looked up and the command that failed, so that
``VM_BAD_POWER_STATE [ref, halted, running]`` from ``xm delete web`` reads "Domain 'web' is running;
it must be halted for that. Stop it first with 'xm shutdown web'."
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from .connection import XenAPIFailure

MIB = 1 << 20


@dataclass
class Context:
    """What the failing command was doing."""

    command: str = ""
    names: dict[str, str] = field(default_factory=dict)

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
DYNAMIC_COMMANDS = ("sched-credit", "vcpu-pin")


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
    if what == "path":
        return f"the path '{value}' cannot be used on the server host: {reason}"
    return f"{what} cannot be {value}: {reason}"


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
    "OPERATION_NOT_ALLOWED": "{0}",
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
}


def explain(failure: XenAPIFailure, command: str = "", names: dict[str, str] | None = None) -> str:
    """The sentence for a failure; ``command`` and ``names`` let it name the domain and the next step."""
    template = MESSAGES.get(failure.code)
    fallback = f"{failure.code} {' '.join(failure.params)}".strip()
    if template is None:
        return fallback
    if callable(template):
        return template(list(failure.params), Context(command, dict(names or {})))
    try:
        return template.format(*failure.params)
    except IndexError:
        return fallback
