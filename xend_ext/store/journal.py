"""The journal: append-only files of SXP records, one mutation per line.

Record format (one line, UTF-8, ``\\n``-terminated)::

    (<seq> <crc> <op>)

``seq`` is the decimal sequence number (1, 2, ... across files and restarts), ``crc``
the CRC-32 (zlib) of the UTF-8 bytes ``"<seq> <op>"`` as 8 lowercase hex digits, and
``op`` one SXP expression (:func:`xend_ext.sxp.dumps` never emits a line break)::

    (create <class> <ref> ((<field> <value>) ...))
    (destroy <class> <ref>)
    (set <class> <ref> <field> <value>)
    (map_add <class> <ref> <field> <key> <value>)
    (map_remove <class> <ref> <field> <key>)
    (set_add <class> <ref> <field> <item>)
    (set_remove <class> <ref> <field> <item>)

A scalar value is an atom, a set ``(item ...)``, a map ``((key value) ...)``; the
field's kind in the description says which, so ``()`` is unambiguous.  Example::

    (42 b1ee7a94 (set VM OpaqueRef:5f0c name_label "web 1"))

Files are named ``journal-<first seq, 20 digits>.sxp`` so sorting by name is replay
order; a new file starts when the store compacts.  Recovery (:func:`replay`) applies
the records after the snapshot's seq, checks that the numbers run on without a gap,
ignores and truncates an unterminated *last* line of the *last* file (a crash during a
write that was never acknowledged), and refuses anything else that is bad, a complete
last line with a bad checksum included: dropping it silently could lose an acknowledged
change.  The refusal (:class:`JournalDamaged`) names the file, the line and the record;
``xend-ext fsck --repair`` keeps everything before it.

Records are read by a tokenizer that does the work in one C-level regex call per record
(:func:`read_op`); anything it does not expect goes to the general SXP reader.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import sxp
from .errors import JournalDamaged
from .fileio import fsync_dir, sync
from .schema import Classes, FieldSpec, check_value, xml_unsafe
from .snapshot import Tables

__all__ = [
    "JournalDamaged",
    "JournalFile",
    "OPS",
    "ReplayError",
    "apply_op",
    "decode_op",
    "encode_op",
    "file_name",
    "format_record",
    "list_files",
    "parse_record",
    "read_op",
    "replay",
]

log = logging.getLogger(__name__)

OPS = ("create", "destroy", "set", "map_add", "map_remove", "set_add", "set_remove")

_FILE = re.compile(r"journal-([0-9]{20})\.sxp")
_RECORD = re.compile(rb"\(([0-9]{1,20}) ([0-9a-f]{8}) (.*)\)\n", re.DOTALL)
# the most common record whole: a field set to a plain ASCII atom or to a quoted string without escapes
_ATOM = rb"[^\x00-\x20()\"'#\x7f-\xff]+"
_SET_RECORD = re.compile(rb'\(([0-9]{1,20}) ([0-9a-f]{8}) (\(set (%s) (%s) (%s) (?:"([^"\\\'#]*)"|(%s))\))\)\n'
                         % (_ATOM, _ATOM, _ATOM, _ATOM))


def file_name(first_seq: int) -> str:
    """Name of the journal file whose first record is ``first_seq``."""
    return f"journal-{first_seq:020d}.sxp"


@dataclass(slots=True)
class JournalFile:
    """A journal file on disk; ``last`` is its last record's seq (None while empty)."""

    first: int
    path: Path
    last: int | None = None
    size: int = 0


def list_files(state_dir: Path) -> list[JournalFile]:
    """The journal files of a state directory, in replay order."""
    files = []
    for entry in os.scandir(state_dir):
        m = _FILE.fullmatch(entry.name)
        if m and entry.is_file(follow_symlinks=False):
            files.append(JournalFile(int(m.group(1)), Path(entry.path)))
    files.sort(key=lambda f: f.first)
    return files


# --------------------------------------------------------------------------- encoding


def _field(classes: Classes, cls: object, fname: object) -> FieldSpec:
    try:
        return classes[cls][fname]  # type: ignore[index]
    except KeyError:
        if cls not in classes:
            raise ValueError(f"unknown class {cls!r}") from None
        raise ValueError(f"unknown field {cls}.{fname}") from None
    except TypeError:
        raise ValueError(f"bad class/field {cls!r}.{fname!r}") from None


def _wire(kind: str, value: object) -> object:
    """The SXP form of an encoded value (maps become lists of pairs)."""
    if kind == "map":
        return [[k, v] for k, v in value.items()]  # type: ignore[union-attr]
    return value


_ARITY = {
    "create": 4,
    "destroy": 3,
    "set": 5,
    "map_add": 6,
    "map_remove": 5,
    "set_add": 5,
    "set_remove": 5,
}


def encode_op(op: tuple, classes: Classes) -> str:
    """Check ``op`` against the description and return its SXP text; ValueError if bad.

    Checking here, when the op is appended, keeps a model bug from writing a record
    that would stop the next start.
    """
    if type(op) not in (tuple, list) or not op or type(op[0]) is not str or _ARITY.get(op[0]) != len(op):
        raise ValueError(f"malformed journal operation {op!r}")
    name, cls, ref = op[0], op[1], op[2]
    if type(cls) is not str:
        raise ValueError(f"class name must be a str: {op!r}")
    if type(ref) is not str or not ref:
        raise ValueError(f"object reference must be a non-empty str: {op!r}")
    if name == "destroy":
        if cls not in classes:
            raise ValueError(f"unknown class {cls!r}")
        return sxp.dumps(op)
    if name == "create":
        fields = op[3]
        specs = classes.get(cls) if type(cls) is str else None
        if specs is None:
            raise ValueError(f"unknown class {cls!r}")
        if type(fields) is not dict:
            raise ValueError(f"create needs a dict of fields, got {type(fields).__name__}")
        if xml_unsafe(ref):
            raise ValueError(f"{cls} reference {ref!r} has characters a snapshot cannot hold")
        pairs = []
        for fname, value in fields.items():
            spec = specs.get(fname)
            if spec is None:
                raise ValueError(f"unknown field {cls}.{fname}")
            check_value(spec, value)
            pairs.append((fname, _wire(spec.kind, value)))
        return sxp.dumps(("create", cls, ref, pairs))
    spec = _field(classes, cls, op[3])
    if name == "set":
        check_value(spec, op[4])
        return sxp.dumps(("set", cls, ref, op[3], _wire(spec.kind, op[4])))
    want = "map" if name.startswith("map") else "set"
    if spec.kind != want or not all(type(a) is str for a in op[4:]):
        raise ValueError(f"{name} needs a {want} field and str arguments: {op!r}")
    return sxp.dumps(op)


def format_record(seq: int, payload: str) -> bytes:
    """One journal line for the op text ``payload`` (see the module docstring)."""
    head = b"%d" % seq
    data = payload.encode("utf-8")
    crc = zlib.crc32(data, zlib.crc32(head + b" "))
    return b"(%s %08x %s)\n" % (head, crc, data)


# --------------------------------------------------------------------------- decoding


class ReplayError(Exception):
    """A record that is well-formed but cannot be applied (message says why)."""


def parse_record(line: bytes) -> tuple[int, sxp.Sxp]:
    """Split and verify one line; raise ReplayError if torn, damaged or unparsable."""
    m = _SET_RECORD.fullmatch(line)
    if m is not None:  # one regex call reads it (what read_op's general path would give)
        seq_text, crc_text, payload, cls, ref, field, quoted, plain = m.groups()
        if zlib.crc32(payload, zlib.crc32(seq_text + b" ")) == int(crc_text, 16):
            try:
                value = (plain if quoted is None else quoted).decode("utf-8")
            except UnicodeDecodeError:
                pass  # the general path below says so
            else:
                return int(seq_text), ["set", cls.decode("ascii"), ref.decode("ascii"), field.decode("ascii"), value]
    m = _RECORD.fullmatch(line)
    if m is None:
        if not line.endswith(b"\n"):
            raise ReplayError("incomplete record (no end of line)")
        raise ReplayError("malformed record")
    seq_text, crc_text, payload = m.groups()
    if zlib.crc32(seq_text + b" " + payload) != int(crc_text, 16):
        raise ReplayError("checksum mismatch")
    try:
        return int(seq_text), read_op(payload.decode("utf-8"))
    except (UnicodeDecodeError, sxp.SxpError) as exc:
        raise ReplayError(f"unreadable operation: {exc}") from None


_FAST_TOKEN = re.compile(r'[()]|"(?:[^"\\]|\\.)*"|[^\s()"\'#]+')
# the most common record, a field set to a plain atom or to a quoted string without escapes
_SET_OP = re.compile(r'\(set ([^\s()"\'#]+) ([^\s()"\'#]+) ([^\s()"\'#]+) (?:"([^"\\\'#]*)"|([^\s()"\'#]+))\)')


def read_op(text: str) -> sxp.Sxp:
    """``sxp.loads(text)`` for the single-line records :func:`format_record` writes, several
    times faster: the tokens come from one regex call; anything unusual (comments, single
    quotes, stray characters, unbalanced lists) is left to the general reader and its errors."""
    simple = _SET_OP.fullmatch(text)
    if simple is not None:
        cls, ref, field, quoted, plain = simple.groups()
        return ["set", cls, ref, field, plain if quoted is None else quoted]
    if "'" in text or "#" in text or _FAST_TOKEN.sub("", text).strip(" "):
        return sxp.loads(text)
    stack: list[list[sxp.Sxp]] = []
    current: list[sxp.Sxp] | None = None
    result: sxp.Sxp | None = None
    for token in _FAST_TOKEN.findall(text):
        if result is not None:
            return sxp.loads(text)  # trailing data
        if token == "(":
            if current is not None:
                stack.append(current)
            current = []
        elif token == ")":
            if current is None:
                return sxp.loads(text)
            done = current
            current = stack.pop() if stack else None
            if current is None:
                result = done
            else:
                current.append(done)
        elif current is None:
            return sxp.loads(text)  # a bare atom, not an operation
        elif token[0] == '"':
            current.append(sxp.loads(token) if "\\" in token else token[1:-1])
        else:
            current.append(token)
    if result is None:
        return sxp.loads(text)
    return result


def _scalar(spec: FieldSpec, value: object) -> object:
    if spec.kind == "map":
        if not isinstance(value, list):
            raise ReplayError(f"field {spec.name}: map expected")
        result: dict[str, str] = {}
        for pair in value:
            if not (isinstance(pair, list) and len(pair) == 2 and all(type(x) is str for x in pair)):
                raise ReplayError(f"field {spec.name}: bad map entry {pair!r}")
            result[pair[0]] = pair[1]
        return result
    try:
        check_value(spec, value)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    return value


def decode_op(x: sxp.Sxp, classes: Classes) -> tuple:
    """The op tuple for a parsed record, checked against the description."""
    if not (isinstance(x, list) and len(x) >= 3 and type(x[0]) is str and type(x[1]) is str
            and type(x[2]) is str):
        raise ReplayError("not an operation")
    name, cls, ref = x[0], x[1], x[2]
    specs = classes.get(cls)
    if specs is None:
        raise ReplayError(f"unknown class {cls!r} (written by a different version?)")
    if _ARITY.get(name) != len(x):
        raise ReplayError(f"bad operation {name!r} with {len(x)} elements")
    if name == "set":  # the most common record: checked without the general path below
        spec = _spec(specs, cls, x[3])
        value = x[4]
        return (name, cls, ref, x[3], value if spec.kind != "map" and spec.check(value) else _scalar(spec, value))
    if name == "create":
        if not isinstance(x[3], list):
            raise ReplayError("create: field list expected")
        fields = {}
        for pair in x[3]:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ReplayError(f"create: bad field {pair!r}")
            fields[pair[0]] = _scalar(_spec(specs, cls, pair[0]), pair[1])
        return (name, cls, ref, fields)
    if name == "destroy":
        return (name, cls, ref)
    spec = _spec(specs, cls, x[3])
    want = "map" if name.startswith("map") else "set"
    if spec.kind != want or not all(type(a) is str for a in x[4:]):
        raise ReplayError(f"{name} on {spec.kind} field {cls}.{spec.name}")
    return tuple(x)


def _spec(specs: dict[str, FieldSpec], cls: str, fname: object) -> FieldSpec:
    spec = specs.get(fname) if type(fname) is str else None  # type: ignore[arg-type]
    if spec is None:
        raise ReplayError(f"unknown field {cls}.{fname} (written by a different version?)")
    return spec


def apply_op(tables: Tables, op: tuple) -> None:
    """Apply one decoded op to ``tables`` as the model did; ReplayError if impossible."""
    name, cls, ref = op[0], op[1], op[2]
    table = tables[cls]
    if name == "create":
        if ref in table:
            raise ReplayError(f"create of {cls} {ref}, which already exists")
        table[ref] = {f: _copy(v) for f, v in op[3].items()}
        return
    if name == "destroy":
        table.pop(ref, None)
        return
    obj = table.get(ref)
    if obj is None:
        raise ReplayError(f"{name} on {cls} {ref}, which does not exist")
    fname = op[3]
    if name == "set":
        obj[fname] = _copy(op[4])
    elif name == "map_add":
        obj.setdefault(fname, {})[op[4]] = op[5]
    elif name == "map_remove":
        obj.get(fname, {}).pop(op[4], None)
    elif name == "set_add":
        items = obj.setdefault(fname, [])
        if op[4] not in items:
            items.append(op[4])
    else:  # set_remove
        items = obj.get(fname)
        if items and op[4] in items:
            items.remove(op[4])


def _copy(value: object) -> object:
    if type(value) is list:
        return list(value)
    if type(value) is dict:
        return dict(value)
    return value


# --------------------------------------------------------------------------- recovery


def replay(
    state_dir: Path, classes: Classes, apply: Callable[[tuple], None], snapshot_seq: int
) -> tuple[int, list[JournalFile]]:
    """Give every journal record after ``snapshot_seq`` to ``apply``, decoded (a sink's, see
    :mod:`.sink`: it raises ReplayError for an op that cannot be applied).

    Returns the last seq (at least ``snapshot_seq``) and the surviving files with their
    last seq and size.  Truncates a torn tail; removes files left empty.
    """
    files = list_files(state_dir)
    expected = snapshot_seq + 1  # next seq that must be applied
    prev = 0  # last seq seen, to check ordering of records the snapshot covers
    for index, jf in enumerate(files):
        is_last_file = index == len(files) - 1
        torn: tuple[int, int, str] | None = None  # (line number, offset, reason)
        offset = 0
        with open(jf.path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                here = max(expected, prev + 1)  # the record this line should be
                try:
                    seq, parsed = parse_record(line)
                except ReplayError as exc:
                    if line.endswith(b"\n"):  # written whole, so damaged since: not a torn write
                        raise JournalDamaged(jf.path, lineno, offset, here, str(exc)) from None
                    if not is_last_file:
                        raise JournalDamaged(jf.path, lineno, offset, here,
                                             f"{exc} at the end of a file that is not the last") from None
                    torn = (lineno, offset, str(exc))
                    break
                if seq <= prev or (jf.last is None and seq != jf.first):
                    raise JournalDamaged(jf.path, lineno, offset, here, f"record {seq} is out of order")
                if seq > snapshot_seq:
                    if seq != expected:
                        raise JournalDamaged(
                            jf.path, lineno, offset, here, f"found record {seq}: "
                            "records are missing (a journal file deleted?)"
                        )
                    try:
                        apply(decode_op(parsed, classes))
                    except ReplayError as exc:
                        raise JournalDamaged(jf.path, lineno, offset, seq, str(exc)) from None
                    expected = seq + 1
                prev = jf.last = seq
                offset += len(line)
        if torn is not None:
            log.warning(
                "%s line %d: %s; ignoring the unacknowledged last record (crash during a write)",
                jf.path, torn[0], torn[2],
            )
            _truncate(jf.path, torn[1])
        jf.size = offset
    survivors = []
    removed = False
    for jf in files:
        if jf.last is None:
            os.unlink(jf.path)
            removed = True
        else:
            survivors.append(jf)
    if removed:
        fsync_dir(state_dir)
    return max(snapshot_seq, expected - 1), survivors


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        sync(fd)
    finally:
        os.close(fd)
