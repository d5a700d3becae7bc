"""Group config files for ``xm grp-create`` (seed 004's domain groups), read safely.

A group config names a group and its members, in the Python syntax of domain configs::

    name = "shop"
    description = "the web shop"
    placement = "normal"            # or "anti_affinity"
    members = ["db", "web.cfg", "/etc/xen/cache.cfg"]

Each member is a domain name, or a domain config file: an entry with a ``/`` in it or ending in
``.cfg``. A relative config path is looked up next to the group config first, then in the domain
config search path; the domain is then defined from that file by the domain config code
(``domain_config``), exactly as ``xm new`` would. As for domain and pool configs, the file is
parsed with ``ast`` and never executed, each line must be ``variable = literal``, and an unknown
variable is an error naming it. ``VAR=VALUE`` on the command line sets or overrides a variable;
``members=db,web`` (text with commas) is read as a list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import domain_config
from .domain_config import ConfigError, Source, find_config, parse_override, text_value, unknown_variable
from .domain_config import load as load_config

DEFAULT_PATH = ".:/etc/xen/groups"
KNOWN = ("name", "members", "description", "placement")
PLACEMENTS = ("normal", "anti_affinity")
CONFIG_SUFFIX = ".cfg"


@dataclass
class Member:
    """One entry of ``members``: a domain by name, or the domain a config file defines."""

    entry: str
    name: str
    config: Path | None = None
    #: the VM record (wire form) the config defines; None for a member named directly
    record: dict | None = None


@dataclass
class GroupConfig:
    name: str
    description: str = ""
    placement: str = "normal"
    members: list[Member] = field(default_factory=list)
    source: Source | None = None

    def record(self) -> dict:
        """The ``VM_group.create`` record, without its members (they are added once they exist)."""
        return {"name_label": self.name, "name_description": self.description, "placement": self.placement}

    def describe(self) -> dict:
        """What ``grp-create -n`` prints: the group and what each member is."""
        return {"group": self.record(),
                "members": [{"name": m.name, **({"config": str(m.config), "record": m.record} if m.config else {})}
                            for m in self.members]}


def is_config_entry(entry: str) -> bool:
    """A member entry that names a domain config file rather than a domain."""
    return "/" in entry or entry.endswith(CONFIG_SUFFIX)


def _override(text: str) -> tuple[str, object]:
    """``VAR=VALUE``; ``members=a,b`` is a list of members."""
    var, value = parse_override(text)
    if var == "members" and isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    return var, value


def load(name: str, overrides: list[str], search: str = DEFAULT_PATH) -> tuple[dict[str, object], Source]:
    """The variables of a group config file with the command line's ``VAR=VALUE`` applied on top."""
    return load_config(name, overrides, search, _override)


def _check_names(values: dict[str, object], source: Source) -> None:
    for var in values:
        if var not in KNOWN:
            raise unknown_variable(var, source, KNOWN, "a group config")


def _find_member_config(entry: str, source: Source, domain_path: str) -> Path:
    """A member's config file: as given if absolute, else next to the group config, then as given
    (from the current directory), then in the domain config search path."""
    given = Path(entry).expanduser()
    beside = Path(source.path).parent / given
    if not given.is_absolute() and beside.is_file():
        return beside.resolve()
    try:
        return find_config(entry, domain_path)
    except ConfigError:
        where = domain_path or "no other directory"
        raise ConfigError(f"{source.where('members')}: member config file '{entry}' not found (looked next to "
                          f"{source.path}, in the current directory and in {where})") from None


def to_group(values: dict[str, object], source: Source, domain_path: str = domain_config.DEFAULT_PATH,
             warn: Callable[[str], None] | None = None) -> GroupConfig:
    """The group a config describes, with every member config read (nothing is sent anywhere)."""
    _check_names(values, source)
    name = text_value("name", values["name"], source) if "name" in values else Path(source.path).stem
    if not name.strip():
        raise ConfigError(f"{source.where('name')}: name must not be empty")
    placement = text_value("placement", values.get("placement", "normal"), source)
    if placement not in PLACEMENTS:
        raise ConfigError(f"{source.where('placement')}: placement must be one of {', '.join(PLACEMENTS)}, "
                          f"not {placement!r}")
    group = GroupConfig(name=name, description=text_value("description", values.get("description", ""), source),
                        placement=placement, source=source)
    entries = values.get("members", [])
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{source.where('members')}: members must be a list of domain names and domain "
                          f"config files, not {entries!r}")
    seen: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{source.where('members')}: each member is a domain name or a domain config "
                              f"file (a string), not {entry!r}")
        entry = entry.strip()
        if is_config_entry(entry):
            path = _find_member_config(entry, source, domain_path)
            member_values, member_source = domain_config.load(str(path), [], domain_path)
            record = domain_config.wire_record(domain_config.to_record(member_values, member_source, warn=warn))
            member = Member(entry, str(record["name_label"]), path, record)
        else:
            member = Member(entry, entry)
        if member.name in seen:
            raise ConfigError(f"{source.where('members')}: domain '{member.name}' is listed twice "
                              f"({seen[member.name]!r} and {entry!r})")
        seen[member.name] = entry
        group.members.append(member)
    return group


def read(name: str, overrides: list[str], search: str = DEFAULT_PATH,
         domain_path: str = domain_config.DEFAULT_PATH, warn: Callable[[str], None] | None = None) -> GroupConfig:
    """``load`` and ``to_group`` in one."""
    values, source = load(name, overrides, search)
    return to_group(values, source, domain_path, warn)
