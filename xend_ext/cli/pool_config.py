"""CPU pool config files for ``xm cpupool-new``/``cpupool-create``, read safely, made into a record.

xend 4.1 read two kinds: a Python script (``name = "web"``, ``cpus = ["2", "3"]``), which it
executed, and with ``-F`` a raw SXP ``(pool (name_label web) ...)``. Here a Python-syntax config is
parsed with ``ast`` like a domain config (see ``domain_config``): only ``variable = literal`` lines,
nothing executed, and an unknown variable is an error that names it, since a misspelt ``shced``
would otherwise silently give the pool the default scheduler.

Both kinds become the same SXP (what ``-n`` prints, and what ``-F`` reads back) and the same
``cpu_pool.create`` record.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from .. import cpuset, sxp
from .domain_config import ConfigError, Source, find_config, parse_override, text_value, unknown_variable
from .domain_config import load as load_config

DEFAULT_PATH = ".:/etc/xen/cpupool"
DEFAULT_SCHED = "credit"
#: the variables of a Python-syntax pool config (xend's four, plus what the record also has)
KNOWN = ("name", "sched", "cpus", "other_config", "auto_power_on", "description")
#: the fields of a raw SXP pool config (``-F``), which name the record's fields directly
SXP_FIELDS = ("name_label", "name_description", "sched_policy", "ncpu", "proposed_CPUs", "other_config",
              "auto_power_on")
_CPU_LIST_TEXT = re.compile(r"^[\d\s,^-]+$")


# -- Python-syntax configs -------------------------------------------------------------------

def _override(text: str) -> tuple[str, object]:
    """``var=value`` from the command line. ``cpus=0-3`` or ``cpus=2,3`` stay CPU lists: as Python
    literals they would read as the number -1 or a tuple."""
    name, _, raw = text.partition("=")
    if name.strip() == "cpus" and _CPU_LIST_TEXT.match(raw) and not raw.strip().isdigit():
        return "cpus", raw.strip()
    return parse_override(text)


def load(name: str, overrides: list[str], search: str = DEFAULT_PATH) -> tuple[dict[str, object], Source]:
    """The variables of a pool config file with the command line's ``var=value`` applied on top."""
    return load_config(name, overrides, search, _override)


def _check_names(values: dict[str, object], source: Source) -> None:
    for var in values:
        if var not in KNOWN:
            raise unknown_variable(var, source, KNOWN, "a pool config")


def _cpu_numbers(text: str, var: str, source: Source) -> list[int]:
    try:
        return sorted(cpuset.parse(text))
    except cpuset.CpuSetError as exc:
        raise ConfigError(f"{source.where(var)}: {var} = {text!r}: {exc}; write CPU numbers and ranges such as "
                          "\"2-3\" or \"0-3,^1\"") from None


def cpus_value(value: object, source: Source) -> tuple[int, list[int]]:
    """(ncpu, proposed CPUs) from ``cpus``, as xend read it: a number of CPUs (``4`` or ``"#4"``)
    lets activation take any free ones; a CPU list (``"0-3,^1"``, ``["2", "3"]``) proposes those."""
    where = source.where("cpus")
    if isinstance(value, bool):
        raise ConfigError(f"{where}: cpus must be a number of CPUs or a CPU list, not {value!r}")
    if isinstance(value, int):
        count = value
    elif isinstance(value, str) and value.strip().startswith("#"):
        digits = value.strip()[1:].strip()
        if not digits.isdigit():
            raise ConfigError(f"{where}: cpus = {value!r}: after '#' comes a number of CPUs, e.g. \"#4\"")
        count = int(digits)
    else:
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, (list, tuple)) and value:
            texts = [text_value("cpus", item, source) for item in value]
        else:
            raise ConfigError(f"{where}: cpus must be a number of CPUs (4, \"#4\") or a CPU list (\"0-3,^1\", "
                              f"[\"2\", \"3\"]), not {value!r}")
        numbers = sorted({n for text in texts for n in _cpu_numbers(text, "cpus", source)})
        if not numbers:
            raise ConfigError(f"{where}: cpus = {value!r} names no CPU")
        return len(numbers), numbers
    if count < 1:
        raise ConfigError(f"{where}: a pool needs at least 1 CPU, not {count}")
    return count, []


def _other_config(value: object, source: Source) -> dict[str, str]:
    """xend's repeatable ``other_config = "key=value"``: a list of them (or one); a dict also reads."""
    where = source.where("other_config")
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: other_config must be a list of \"key=value\" strings, not {value!r}")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item or not item.partition("=")[0].strip():
            raise ConfigError(f"{where}: other_config entries are \"key=value\" strings, not {item!r}")
        key, _, text = item.partition("=")
        out[key.strip()] = text.strip()
    return out


def _flag(value: object, source: Source) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{source.where('auto_power_on')}: auto_power_on must be True or False, not {value!r}")


def to_sxp(values: dict[str, object], source: Source) -> list:
    """The pool's SXP, xend's ``(pool (name_label N) (sched_policy S) (ncpu K) (proposed_CPUs ...) ...)``.

    ``name`` defaults to the config file's name without its extension (xend took the whole file
    name, so ``web.pool`` made a pool called "web.pool").
    """
    _check_names(values, source)
    name = text_value("name", values["name"], source) if "name" in values else Path(source.path).stem
    if not name:
        raise ConfigError(f"{source.where('name')}: name must not be empty")
    sched = text_value("sched", values.get("sched", DEFAULT_SCHED), source)
    ncpu, proposed = cpus_value(values.get("cpus", 1), source)
    node: list = ["pool", ["name_label", name], ["sched_policy", sched], ["ncpu", str(ncpu)]]
    if proposed:
        node.append(["proposed_CPUs", *map(str, proposed)])
    other = _other_config(values.get("other_config", []), source)
    if other:
        node.append(["other_config", *([k, v] for k, v in other.items())])
    if "auto_power_on" in values:
        node.append(["auto_power_on", "1" if _flag(values["auto_power_on"], source) else "0"])
    if "description" in values:
        node.append(["name_description", text_value("description", values["description"], source)])
    return node


# -- raw SXP configs (-F) ------------------------------------------------------------------------

def read_sxp(path_text: str, search: str = DEFAULT_PATH) -> tuple[list, Source]:
    """A raw SXP pool config (``xm cpupool-create -F pool.sxp``), checked field by field."""
    path = find_config(path_text, search)
    try:
        node = sxp.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except sxp.SxpError as exc:
        raise ConfigError(f"{path}: not a raw SXP pool config ({exc}); a Python-syntax config "
                          "(name = \"...\") is given without -F") from None
    if sxp.name(node) != "pool":
        raise ConfigError(f"{path}: a raw pool config is one (pool (name_label ...) ...) expression")
    source = Source(str(path))
    for item in node[1:]:
        field = item[0] if isinstance(item, list) and item and isinstance(item[0], str) else None
        if field not in SXP_FIELDS:
            shown = field if field is not None else sxp.dumps(item)
            close = difflib.get_close_matches(str(shown), SXP_FIELDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; a pool SXP has {', '.join(SXP_FIELDS)}"
            raise ConfigError(f"{path}: unknown field '{shown}'{hint}")
    return node, source


def to_record(node: list, source: Source) -> dict:
    """The ``cpu_pool.create`` record of a pool SXP (ints as decimal strings, the wire convention)."""
    record: dict[str, object] = {}
    for item in node[1:]:
        field, values = item[0], item[1:]
        if field == "proposed_CPUs":
            numbers = [n for value in values for n in _cpu_numbers(_atom(field, value, source), field, source)]
            record[field] = [str(n) for n in sorted(set(numbers))]
        elif field == "other_config":
            pairs = {}
            for pair in values:
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                    raise ConfigError(f"{source.path}: other_config holds (key value) pairs, not {sxp.dumps(pair)}")
                pairs[pair[0]] = pair[1]
            record[field] = pairs
        else:
            if len(values) != 1:
                raise ConfigError(f"{source.path}: ({field} ...) takes one value, not {len(values)}")
            text = _atom(field, values[0], source)
            if field == "ncpu":
                if not text.isdigit() or int(text) < 1:
                    raise ConfigError(f"{source.path}: ncpu must be a number of CPUs (at least 1), not {text!r}")
            elif field == "auto_power_on":
                if text.lower() not in ("0", "1", "true", "false"):
                    raise ConfigError(f"{source.path}: auto_power_on must be 0 or 1, not {text!r}")
                record[field] = text.lower() in ("1", "true")
                continue
            record[field] = text
    if not record.get("name_label"):
        raise ConfigError(f"{source.path} does not name the pool; add (name_label NAME)")
    if "proposed_CPUs" in record and "ncpu" not in record:
        record["ncpu"] = str(len(record["proposed_CPUs"]))  # xend: a CPU list sets the count too
    return record


def _atom(field: str, value: object, source: Source) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{source.path}: {field} takes plain values, not {sxp.dumps(value)}")
    return value
