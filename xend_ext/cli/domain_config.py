"""xm domain config files (``name = "web"``, ``memory = 512`` ...) read safely, made into a VM record.

xend executed these files as Python; that runs whatever a config contains, with the rights of the
administrator. Here each statement must be ``variable = literal``: the file is parsed with
``ast.parse`` and each value read with ``ast.literal_eval``, so a config can only set values.
Unknown variables are errors (a typo such as ``memroy = 512`` would otherwise be silently lost);
variables xend knew that xend-ext does not manage (disks, networks) are ignored with a warning, so
existing configs still load.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .args import MIB
from .connection import CliError

DEFAULT_PATH = "/etc/xen"
DEFAULT_MEMORY = 256  # MiB, the server's default too

# xend's on_* values -> what the server's enums take, per field; "rename-restart" and the
# coredump variants behave as their plain counterparts here (there is no renaming, no core dump).
ACTIONS = {
    "on_poweroff": ("actions_after_shutdown", {"destroy": "destroy", "restart": "restart",
                                               "rename-restart": "restart"}),
    "on_reboot": ("actions_after_reboot", {"destroy": "destroy", "restart": "restart",
                                           "rename-restart": "restart"}),
    "on_crash": ("actions_after_crash", {"destroy": "destroy", "restart": "restart", "preserve": "preserve",
                                         "rename-restart": "restart", "coredump-destroy": "destroy",
                                         "coredump-restart": "restart"}),
}

# variables xend knew that describe devices or the device model: not xend-ext's to manage
IGNORED = frozenset({
    "disk", "vif", "vfb", "vtpm", "pci", "usb", "usbdevice", "builder", "bootloader", "bootargs", "device_model",
    "vnc", "vncunused", "vnclisten", "vncdisplay", "sdl", "serial", "localtime", "on_xend_stop", "boot", "acpi",
    "apic", "pae", "hap", "nographic", "stdvga", "soundhw", "keymap", "vscsi", "cpuid", "cpuid_check",
})


class ConfigError(CliError):
    """A config file or a var=val argument is wrong; the message names the file, line and variable."""


@dataclass
class Source:
    """Where the values came from, for error messages."""

    path: str
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, name: str) -> str:
        line = self.lines.get(name)
        return f"{self.path}, line {line}" if line else ("the command line" if name in self.lines else self.path)


# -- reading ---------------------------------------------------------------------------------

def find_config(name: str, search: str = DEFAULT_PATH) -> Path:
    """The file as given (relative to the current directory), else in each ``search`` directory."""
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve()
    if not given.is_absolute():
        for directory in filter(None, search.split(":")):
            candidate = Path(directory).expanduser() / name
            if candidate.is_file():
                return candidate.resolve()
    where = "" if given.is_absolute() else f" (looked in the current directory and {search or 'nowhere else'})"
    raise ConfigError(f"config file '{name}' not found{where}")


def parse_text(text: str, filename: str) -> tuple[dict[str, object], dict[str, int]]:
    """Variables assigned in a config text, and the line of each; nothing is executed."""
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise ConfigError(f"{filename}, line {exc.lineno}: not valid config syntax ({exc.msg})") from None
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a string on its own line: a comment in xend's examples
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ConfigError(f"{filename}, line {stmt.lineno}: only 'variable = value' lines are allowed "
                              "(configs are read, not executed)")
        name = stmt.targets[0].id
        try:
            values[name] = ast.literal_eval(stmt.value)
        except (ValueError, SyntaxError, TypeError):
            raise ConfigError(f"{filename}, line {stmt.lineno}: the value of '{name}' must be a literal "
                              "(a number, a string, a list, True or False), not an expression") from None
        lines[name] = stmt.lineno
    return values, lines


def parse_override(text: str) -> tuple[str, object]:
    """``var=val`` from the command line: a Python literal if it reads as one, else the text."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ConfigError(f"'{text}' is not var=value")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return name, value


def load(name: str, overrides: list[str], search: str = DEFAULT_PATH,
         override: Callable[[str], tuple[str, object]] = parse_override) -> tuple[dict[str, object], Source]:
    """The variables of a config file (domain, pool or group: one reader for all three) with the
    command line's ``var=val`` applied on top; ``override`` reads one ``var=val``."""
    path = find_config(name, search)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    values, lines = parse_text(text, str(path))
    source = Source(str(path), lines)
    for item in overrides:
        var, value = override(item)
        values[var] = value
        source.lines[var] = 0
    return values, source


def unknown_variable(var: str, source: Source, known, what: str) -> ConfigError:
    """The error for a variable no config of this kind sets, with the likely intended name."""
    names = sorted(known) if isinstance(known, (set, frozenset)) else list(known)  # keep a list's order
    close = difflib.get_close_matches(var, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; {what} sets {', '.join(names)}"
    return ConfigError(f"{source.where(var)}: unknown variable '{var}'{hint}")


def text_value(var: str, value: object, source: Source) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{source.where(var)}: {var} must be a string, not {value!r}")
    return str(value)


# -- values ----------------------------------------------------------------------------------

def _int(name: str, value: object, source: Source, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{source.where(name)}: {name} must be a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{source.where(name)}: {name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{source.where(name)}: {name} must be at least {minimum}, not {number}")
    return number


def _str(name: str, value: object, source: Source) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{source.where(name)}: {name} must be a string, not {value!r}")
    return str(value)


def _bool(name: str, value: object, source: Source) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{source.where(name)}: {name} must be True or False, not {value!r}")


def _cpu_text(name: str, value: object, source: Source) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{source.where(name)}: each CPU list in {name} must be a string like \"2-3\" or "
                          f"\"0-3,^1\", not {value!r}")
    text = str(value).strip()
    if not text:
        raise ConfigError(f"{source.where(name)}: {name} has an empty CPU list")
    return text


def cpu_maps(value: object, vcpus_max: int, source: Source) -> dict[str, str]:
    """``cpus`` as VCPUs_params ``cpumap<N>``: one list for every vCPU, or a list giving vCPU N the Nth."""
    if isinstance(value, (list, tuple)):
        if len(value) > vcpus_max:
            raise ConfigError(f"{source.where('cpus')}: cpus lists {len(value)} CPU sets but the domain has "
                              f"{vcpus_max} vCPUs (maxvcpus)")
        return {f"cpumap{n}": _cpu_text("cpus", item, source) for n, item in enumerate(value)}
    text = _cpu_text("cpus", value, source)
    if text in ("all", "any"):
        return {}
    return {f"cpumap{n}": text for n in range(vcpus_max)}


def _pv_args(values: dict[str, object], source: Source) -> str | None:
    """xend built the kernel command line as ``root=<root> <extra>``; ``cmdline`` (xl's) is all of it."""
    if "cmdline" in values:
        return _str("cmdline", values["cmdline"], source)
    parts = []
    if "root" in values:
        parts.append("root=" + _str("root", values["root"], source))
    if "extra" in values:
        parts.append(_str("extra", values["extra"], source))
    return " ".join(p for p in parts if p) if parts else None


# a simple variable: (field of the VM record, conversion)
FIELDS: dict[str, tuple[str, Callable[[str, object, Source], object]]] = {
    "name": ("name_label", _str),
    "description": ("name_description", _str),
    "pool": ("pool_name", _str),
    "kernel": ("PV_kernel", _str),
    "ramdisk": ("PV_ramdisk", _str),
    "auto_power_on": ("auto_power_on", _bool),
    "uuid": ("uuid", _str),
    "order": ("order", lambda var, value, source: _int(var, value, source, 0)),
    "start_delay": ("start_delay", lambda var, value, source: _int(var, value, source, 0)),
    "shutdown_delay": ("shutdown_delay", lambda var, value, source: _int(var, value, source, 0)),
}
# variables that make up several fields together, handled in to_record
COMBINED = frozenset({"memory", "maxmem", "vcpus", "maxvcpus", "cpus", "cpu_weight", "cpu_cap", "extra", "root",
                      "cmdline", "on_xend_start", *ACTIONS})
KNOWN = frozenset(FIELDS) | COMBINED


def _action(var: str, value: object, source: Source) -> str:
    mapping = ACTIONS[var][1]
    text = _str(var, value, source)
    if text not in mapping:
        raise ConfigError(f"{source.where(var)}: {var} = '{text}' is not supported; use one of "
                          f"{', '.join(sorted(mapping))}")
    return mapping[text]


def _check_names(values: dict[str, object], source: Source, warn: Callable[[str], None] | None) -> None:
    for var in values:
        if var in IGNORED:
            if warn is not None:
                warn(f"Warning: {source.where(var)}: '{var}' is not managed by xend-ext and is ignored.")
        elif var not in KNOWN:
            raise unknown_variable(var, source, KNOWN, "a domain config")


def to_record(values: dict[str, object], source: Source, warn: Callable[[str], None] | None = None) -> dict:
    """The Xen-API VM record (for VM.create) a config describes."""
    _check_names(values, source, warn)
    if "name" not in values:
        raise ConfigError(f"{source.path} does not set name; add name = \"...\" or give name=... on the command line")
    record: dict[str, object] = {}
    if "on_xend_start" in values:  # xend's spelling of auto_power_on; auto_power_on wins when both are given
        text = _str("on_xend_start", values["on_xend_start"], source)
        if text not in ("start", "ignore"):
            raise ConfigError(f"{source.where('on_xend_start')}: on_xend_start must be 'start' or 'ignore'")
        record["auto_power_on"] = text == "start"
    for var, (target, convert) in FIELDS.items():
        if var in values:
            record[target] = convert(var, values[var], source)
    for var, (target, _mapping) in ACTIONS.items():
        if var in values:
            record[target] = _action(var, values[var], source)
    if not record["name_label"]:
        raise ConfigError(f"{source.where('name')}: name must not be empty")

    memory = _int("memory", values.get("memory", DEFAULT_MEMORY), source, 1)
    maxmem = _int("maxmem", values["maxmem"], source, 1) if "maxmem" in values else memory
    if maxmem < memory:
        raise ConfigError(f"{source.where('maxmem')}: maxmem ({maxmem} MiB) is below memory ({memory} MiB)")
    vcpus = _int("vcpus", values.get("vcpus", 1), source, 1)
    maxvcpus = _int("maxvcpus", values["maxvcpus"], source, 1) if "maxvcpus" in values else vcpus
    if maxvcpus < vcpus:
        raise ConfigError(f"{source.where('maxvcpus')}: maxvcpus ({maxvcpus}) is below vcpus ({vcpus})")
    record.update(memory_target=memory * MIB, memory_static_max=maxmem * MIB, VCPUs_at_startup=vcpus,
                  VCPUs_max=maxvcpus)
    params: dict[str, str] = {}
    if "cpu_weight" in values:
        params["weight"] = str(_int("cpu_weight", values["cpu_weight"], source, 1))
    if "cpu_cap" in values:
        params["cap"] = str(_int("cpu_cap", values["cpu_cap"], source, 0))
    if "cpus" in values:
        params.update(cpu_maps(values["cpus"], maxvcpus, source))
    if params:
        record["VCPUs_params"] = params
    pv_args = _pv_args(values, source)
    if pv_args is not None:
        record["PV_args"] = pv_args
    return record


def wire_record(record: dict) -> dict:
    """The record as sent: ints as decimal strings (the Xen-API wire convention)."""
    return {k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in record.items()}
