"""The snapshot: the whole state as one XML file (``state.xml``), replaced atomically.

Shape, format 3 (columns: a table's objects in blocks of at most 1,000 rows, each field one
element whose text is the block's values, one a line, so that a start reads a block's field
with one split instead of a parser callback per object and field)::

    <xend-ext-state format="3" seq="1234" grammar="5f0c13aa">
    <table class="VM">
    <rows n="2"><ref>OpaqueRef:a
    OpaqueRef:b</ref><name_label>web 1
    "two\\nlines</name_label><VCPUs_max>2
    4</VCPUs_max><groups>["OpaqueRef:g"]
    []</groups><other_config>{"k":"v"}
    {}</other_config></rows>
    </table>
    </xend-ext-state>
    <!-- crc32 8d1f03c2 -->

Line k of every element of a block is the k-th object's.  A scalar (and a ref) is its text,
unless that text holds a line break, starts with ``"`` or has characters XML 1.0 cannot carry:
then it is ``"`` and the text in Python's backslash escapes (``unicode_escape``: ASCII, so every
Python string round-trips).  A set is a JSON array of strings, a map a JSON object (escaped
the same way if they hold a lone surrogate, which JSON cannot keep apart from a pair).  A
block holds the fields its objects have (all of them unless the state was written before a
field was added); consecutive objects with the same fields share blocks.  ``seq`` is the
last journal sequence number the snapshot includes.

The last line is the CRC-32 of everything before it: a snapshot that does not match it is
damaged and refuses the start (``xend-ext fsck``).  ``grammar`` is the CRC-32 of the RelaxNG
grammar (:mod:`.schema`) the snapshot was validated against when it was written: a snapshot
is validated before it may replace a good one, and again when loaded only if the grammar
has changed since (another version wrote it) or when asked (``verify``).  Formats 1 (one
element per field) and 2 (one element per object, scalar fields as attributes), written by
older versions, are still read, validated against their grammars; the next snapshot is
written in format 3.  :func:`serialize` still writes format 2 when asked (``fmt``).
Reading streams the blocks into a sink (:mod:`.sink`) as expat reads them (C, no tree built);
a snapshot that must be validated is parsed by lxml first.  The parsers are hardened: a DTD is
refused, no entities, no network, no huge-tree mode.

Replacing is done in steps the store runs in order, and which the fault-injection
tests call one by one: :func:`serialize`, :func:`write_temp` (temp file in the same
directory, fsync), :func:`commit` (rename over ``state.xml``, fsync the directory).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from xml.parsers import expat

from lxml import etree

from .errors import SnapshotDamaged, StoreError
from .fileio import fsync_dir, sync, write_all
from .schema import (
    B64,
    FORMAT,
    FORMAT_V1,
    FORMAT_V2,
    ROOT,
    Classes,
    FieldSpec,
    relaxng,
    relaxng_v1,
    relaxng_v2,
    xml_unsafe,
)

if TYPE_CHECKING:
    from .sink import Sink

__all__ = [
    "SNAPSHOT_NAME",
    "TEMP_NAME",
    "Tables",
    "SnapshotDamaged",
    "Validator",
    "block_of",
    "key_of",
    "text_of",
    "commit",
    "load",
    "remove_temp",
    "serialize",
    "write_temp",
]

SNAPSHOT_NAME = "state.xml"
TEMP_NAME = ".state.xml.tmp"

Tables = dict[str, dict[str, dict[str, object]]]

_TRAILER = re.compile(rb"<!-- crc32 ([0-9a-f]{8}) -->\n\Z")
_TRAILER_START = b"<!-- crc32 "
_TRAILER_SIZE = len(b"<!-- crc32 01234567 -->\n")


class Validator:
    """The compiled grammars, one per thread (lxml validators are not shared across threads).

    ``get()`` is the grammar of the format written now, ``get(FORMAT_V2)`` and ``get(FORMAT_V1)``
    the older ones;
    ``digest`` names the current grammar in the snapshots validated against it.
    """

    def __init__(self, description: object):
        self._text = {FORMAT: relaxng(description).encode("utf-8"),  # type: ignore[arg-type]
                      FORMAT_V2: relaxng_v2(description).encode("utf-8"),  # type: ignore[arg-type]
                      FORMAT_V1: relaxng_v1(description).encode("utf-8")}  # type: ignore[arg-type]
        self.digests = {fmt: f"{zlib.crc32(text):08x}" for fmt, text in self._text.items()}
        self.digest = self.digests[FORMAT]
        self._local = threading.local()
        self.get()  # fail early if the grammar itself is broken

    def get(self, fmt: str = FORMAT) -> etree.RelaxNG:
        cache = self._local.__dict__.setdefault("rng", {})
        rng = cache.get(fmt)
        if rng is None:
            rng = cache[fmt] = etree.RelaxNG(etree.fromstring(self._text[fmt]))
        return rng


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


# --------------------------------------------------------------------------- writing


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _unb64(text: str) -> str:
    raw = base64.b64decode("".join(text.split()), validate=True)
    return raw.decode("utf-8", "surrogatepass")


def _put_text(el: etree._Element, text: str) -> None:
    if xml_unsafe(text):
        el.set("enc", B64)
        el.text = _b64(text)
    else:
        el.text = text


ROWS = 1000  # objects per block of format 3


def serialize(tables: Tables, seq: int, classes: Classes, validator: Validator, fmt: str = FORMAT) -> bytes:
    """The snapshot document for ``tables`` at ``seq``, validated, checksummed; StoreError if bad.

    Format 3 unless ``fmt`` is FORMAT_V2 (the per-object layout of older versions, which tests
    and tools may still want to write)."""
    unknown = set(tables) - set(classes)
    if unknown:
        raise StoreError(f"snapshot: unknown class(es) {', '.join(sorted(unknown))}")
    root = etree.Element(ROOT, format=fmt, seq=str(int(seq)), grammar=validator.digests[fmt])
    root.text = "\n"
    for cls in sorted(classes):
        table = etree.SubElement(root, "table", {"class": cls})
        table.text = table.tail = "\n"
        objects = tables.get(cls) or {}
        rows = ((ref, _checked(cls, classes[cls], ref, objects[ref])) for ref in sorted(objects))
        (_put_objects if fmt == FORMAT_V2 else _put_blocks)(table, cls, classes[cls], rows)
    rng = validator.get(fmt)
    if not rng.validate(root):
        raise StoreError(f"snapshot would not match the state schema: {rng.error_log.last_error}")
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root, encoding="UTF-8") + b"\n"
    return body + b"%s%08x -->\n" % (_TRAILER_START, zlib.crc32(body))


def _checked(cls: str, specs: dict, ref: object, fields: dict[str, object]) -> dict[str, object]:
    if type(ref) is not str or xml_unsafe(ref):
        raise StoreError(f"snapshot: {cls} reference {ref!r} cannot be stored")
    extra = set(fields) - set(specs)
    if extra:
        raise StoreError(f"snapshot: {cls} {ref} has unknown field(s) {', '.join(sorted(extra))}")
    for fname, value in fields.items():
        spec = specs[fname]
        if not spec.check(value):
            raise StoreError(f"snapshot: {cls} {ref} field {fname} ({spec.kind}) has bad value {value!r}")
    return fields


def _line(text: str) -> str:
    """One scalar as a line of a format-3 column (see the module docstring)."""
    if "\n" in text or "\r" in text or text[:1] == '"' or xml_unsafe(text):
        return _escaped(text)
    return text


def _json_line(value: object) -> str:
    """A set or map as a line: JSON, escaped like a scalar if it holds a surrogate (a JSON
    reader would join an escaped pair of them into one character)."""
    texts = value if type(value) is list else [*value, *value.values()]  # type: ignore[union-attr]
    if any(map(_SURROGATE.search, texts)):
        return _escaped(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return json.dumps(value, separators=(",", ":"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(text: str) -> str:
    """``"`` and the text in Python's backslash escapes: ASCII, one line, every str round-trips."""
    return '"' + text.encode("unicode_escape").decode("ascii")


def _unescaped(line: str) -> str:
    return line[1:].encode("ascii").decode("unicode_escape") if line[:1] == '"' else line


def _put_blocks(table: etree._Element, cls: str, specs: dict, rows: Iterable[tuple[str, dict]]) -> None:
    """Format 3: blocks of at most ROWS objects having the same fields, a column per field."""
    block: list[tuple[str, dict]] = []
    names: tuple[str, ...] = ()

    def flush() -> None:
        if not block:
            return
        el = etree.SubElement(table, "rows", n=str(len(block)))
        el.tail = "\n"
        etree.SubElement(el, "ref").text = "\n".join(_line(ref) for ref, _ in block)
        for fname in names:
            line = _json_line if specs[fname].kind in ("set", "map") else _line
            etree.SubElement(el, fname).text = "\n".join(line(fields[fname]) for _, fields in block)
        block.clear()

    for ref, fields in rows:
        have = tuple(f for f in specs if f in fields)
        if have != names or len(block) == ROWS:
            flush()
            names = have
        block.append((ref, fields))
    flush()


def _put_objects(table: etree._Element, cls: str, specs: dict, rows: Iterable[tuple[str, dict]]) -> None:
    """Format 2: an element per object, scalars as attributes, set items and map entries as children."""
    sub = etree.SubElement
    for ref, fields in rows:
        attrs = {"ref": ref}
        children: list[tuple[str, str, str | None, str]] = []  # (tag, field, key, text)
        for fname, value in fields.items():
            kind = specs[fname].kind
            if kind == "set":
                if not value:
                    attrs[fname] = ""
                children += [("s", fname, None, item) for item in value]  # type: ignore[union-attr]
            elif kind == "map":
                if not value:
                    attrs[fname] = ""
                children += [("m", fname, k, v) for k, v in value.items()]  # type: ignore[union-attr]
            elif xml_unsafe(value):  # type: ignore[arg-type]
                children.append(("v", fname, None, value))  # type: ignore[arg-type]
            else:
                attrs[fname] = value  # type: ignore[assignment]
        obj = sub(table, cls, attrs)
        obj.tail = "\n"
        for tag, fname, key, text in children:
            el = sub(obj, tag, f=fname)
            if key is not None:
                if xml_unsafe(key):
                    el.set("k", _b64(key))
                    el.set("k-enc", B64)
                else:
                    el.set("k", key)
            if tag == "v":
                el.set("enc", B64)
                el.text = _b64(text)
            else:
                _put_text(el, text)


def write_temp(state_dir: Path, data: bytes) -> Path:
    """Step 1 of replacing the snapshot: the new content, durable, under a temp name."""
    tmp = state_dir / TEMP_NAME
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        sync(fd)
    except OSError:
        os.unlink(tmp)  # a half snapshot must not hold the space a full disk needs
        raise
    finally:
        os.close(fd)
    return tmp


def commit(state_dir: Path, tmp: Path) -> None:
    """Step 2: atomically make the temp file the snapshot, durably."""
    os.replace(tmp, state_dir / SNAPSHOT_NAME)
    fsync_dir(state_dir)


def remove_temp(state_dir: Path) -> None:
    """Drop a temp file left by a crash before :func:`commit`; it was never the truth."""
    try:
        os.unlink(state_dir / TEMP_NAME)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- reading


def load(path: Path, classes: Classes, validator: Validator, sink: Sink, *, verify: bool = False) -> int:
    """Read a snapshot into ``sink`` object by object and return its seq; raise SnapshotDamaged
    (a StoreError naming the file) if bad.

    The checksum is always checked; the grammar only if the snapshot was validated against
    another one when written (or is format 1), or if ``verify``.  Only a snapshot to validate is
    read whole; else it is read in blocks, twice (checksum, then objects), never held whole.
    """
    try:
        with open(path, "rb") as stream:
            return _load(path, stream, classes, validator, sink, verify)
    except SnapshotDamaged:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read snapshot {path}: {exc.strerror or exc}") from exc
    except StoreError as exc:
        why = str(exc).replace(f"snapshot {path}: ", "").replace(f"snapshot {path} ", "")
        raise SnapshotDamaged(path, why) from exc


def _load(path: Path, stream: BinaryIO, classes: Classes, validator: Validator, sink: Sink, verify: bool) -> int:
    head = stream.read(4096)
    end = check_sum(path, stream, head)
    if b"<!DOCTYPE" in head:
        raise StoreError(f"snapshot {path} has a DOCTYPE/DTD, which a state file never has")
    root = re.search(rb"<%s\b[^>]*>" % ROOT.encode(), head)
    attrs = dict(re.findall(rb'\b(format|grammar)="([^"]*)"', root.group(0))) if root else {}
    if (not verify and end is not None and attrs.get(b"format") == FORMAT.encode()
            and attrs.get(b"grammar") == validator.digest.encode()):
        return _load_columns(path, _blocks(stream, end), classes, sink)
    stream.seek(0)
    body = stream.read(end if end is not None else -1)
    tree = _parse(path, body)
    fmt = tree.getroot().get("format")
    rng = validator.get(fmt if fmt in (FORMAT_V1, FORMAT_V2) else FORMAT)
    if not rng.validate(tree):
        raise StoreError(f"snapshot {path} does not match the state schema: {rng.error_log.last_error}")
    if fmt == FORMAT_V1:
        return _decode_v1(path, tree.getroot(), classes, sink)
    del tree
    return (_load_fast if fmt == FORMAT_V2 else _load_columns)(path, [body], classes, sink)


_BLOCK = 1 << 20


def _blocks(stream: BinaryIO, end: int) -> Iterator[bytes]:
    """The file's bytes up to ``end``, a block at a time."""
    stream.seek(0)
    left = end
    while left > 0:
        block = stream.read(min(_BLOCK, left))
        if not block:
            raise StoreError("snapshot shrank while it was read")
        left -= len(block)
        yield block


def check_sum(path: Path, stream: BinaryIO, head: bytes) -> int | None:
    """The length of the document before its checksum line; SnapshotDamaged if it does not
    match.  None for a snapshot without the line (format 1, from older versions)."""
    size = os.fstat(stream.fileno()).st_size
    start = size - _TRAILER_SIZE
    stream.seek(max(start, 0))
    if start < 0 or _TRAILER.match(stream.read()) is None:
        if head.lstrip().startswith(b"<?xml") and b'format="1"' in head:
            return None
        raise SnapshotDamaged(path, "the checksum line at its end is missing or damaged")
    stream.seek(start)
    want = int(stream.read(_TRAILER_SIZE)[len(_TRAILER_START):][:8], 16)
    crc = 0
    for block in _blocks(stream, start):
        crc = zlib.crc32(block, crc)
    if crc != want:
        raise SnapshotDamaged(path, "does not match its checksum (the file was damaged after it was written)")
    return start


def _parse(path: Path, body: bytes) -> etree._ElementTree:
    try:
        tree = etree.fromstring(body, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise StoreError(f"snapshot {path} is not well-formed XML: {exc}") from exc
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise StoreError(f"snapshot {path} has a DOCTYPE/DTD, which a state file never has")
    return tree


def _load_fast(path: Path, blocks: Iterable[bytes], classes: Classes, sink: Sink) -> int:
    """Decode format 2 into ``sink``, object by object as the parser reads them: what is held at
    once is the sink's state and one object.  The parser is expat's (C, SAX-like, no tree built):
    the document was checksummed, and validated when it was written."""
    empties = {cls: [(f, s.kind == "set") for f, s in specs.items() if s.kind in ("set", "map")]
               for cls, specs in classes.items()}
    row = sink.row
    depth = 0
    seq = ""
    cls = ref = ""
    fields: dict = {}
    child: tuple[str, dict[str, str]] = ("", {})
    texts: list[str] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth, seq, cls, ref, fields, child
        depth += 1
        if depth == 3:  # an object: its scalar fields are its attributes
            if tag not in empties:
                raise StoreError(f"snapshot {path}: unknown class {tag!r}")
            ref = attrs.pop("ref")
            for fname, is_set in empties[tag]:
                if fname in attrs:
                    attrs[fname] = [] if is_set else {}  # type: ignore[assignment]
            cls, fields = tag, attrs
        elif depth == 4:  # a set item, a map entry, a base64 value
            child = (tag, attrs)
            texts.clear()
        elif depth == 1:
            if tag != ROOT:
                raise StoreError(f"snapshot {path}: root element {tag!r}, not {ROOT}")
            seq = attrs.get("seq", "")
        elif depth != 2 or tag != "table":
            raise StoreError(f"snapshot {path}: unexpected element {tag!r}")

    def end(_tag: str) -> None:
        nonlocal depth
        if depth == 4:
            tag, attrs = child
            text = "".join(texts)
            if attrs.get("enc") == B64:
                text = _unb64(text)
            fname = attrs["f"]
            if tag == "s":
                fields.setdefault(fname, []).append(text)
            elif tag == "m":
                key = _unb64(attrs["k"]) if attrs.get("k-enc") == B64 else attrs["k"]
                entries = fields.setdefault(fname, {})
                if key in entries:
                    raise StoreError(f"snapshot {path}: {cls} {ref} {fname} has key {key!r} twice")
                entries[key] = text
            else:
                fields[fname] = text
        elif depth == 3 and not row(cls, ref, fields):
            raise StoreError(f"snapshot {path}: {cls} {ref} appears twice")
        depth -= 1

    def chars(data: str) -> None:
        if depth == 4:
            texts.append(data)

    _parse_stream(path, blocks, start, end, chars)
    if not seq.isdigit():
        raise StoreError(f"snapshot {path}: no seq")
    return int(seq)


def _parse_stream(path: Path, blocks: Iterable[bytes], start: Callable, end: Callable, chars: Callable) -> None:
    """Feed ``blocks`` to expat with these handlers (text buffered); no DTD, no entities."""

    def refuse(*_args: object) -> None:
        raise StoreError(f"snapshot {path} has a DOCTYPE/DTD, which a state file never has")

    parser = expat.ParserCreate("UTF-8")
    parser.buffer_text = True
    parser.buffer_size = 1 << 16
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        for block in blocks:
            parser.Parse(block, False)
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise StoreError(f"snapshot {path} is not well-formed XML: {exc}") from exc
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"snapshot {path}: unreadable object ({exc!r})") from exc


def _load_columns(path: Path, blocks: Iterable[bytes], classes: Classes, sink: Sink) -> int:
    """Decode format 3 into ``sink`` a block of rows at a time, as expat reads it: what is held
    at once is the sink's state and one block (its columns split into lists, see :meth:`Sink.table`)."""
    table = sink.table
    depth = 0
    seq = cls = ""
    specs: dict = {}
    rows = 0
    refs: list[str] | None = None
    columns: dict[str, list] = {}
    texts: list[str] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth, seq, cls, specs, rows, refs, columns
        depth += 1
        if depth == 4:
            texts.clear()
        elif depth == 3 and tag == "rows":
            rows, refs, columns = int(attrs["n"]), None, {}
        elif depth == 2 and tag == "table":
            cls = attrs["class"]
            if cls not in classes:
                raise StoreError(f"snapshot {path}: unknown class {cls!r}")
            specs = classes[cls]
        elif depth == 1 and tag == ROOT:
            seq = attrs.get("seq", "")
        else:
            raise StoreError(f"snapshot {path}: unexpected element {tag!r}")

    def end(tag: str) -> None:
        nonlocal depth, refs
        if depth == 4:
            if tag == "ref":
                refs = _column(path, cls, tag, None, "".join(texts), rows)
            elif tag not in specs:
                raise StoreError(f"snapshot {path}: unknown field {cls}.{tag}")
            elif tag in columns:
                raise StoreError(f"snapshot {path}: {cls} {tag} twice in a block")
            else:
                columns[tag] = _column(path, cls, tag, specs[tag], "".join(texts), rows)
        elif depth == 3:
            if refs is None:
                raise StoreError(f"snapshot {path}: a block of {cls} without refs")
            if not table(cls, refs, columns):
                raise StoreError(f"snapshot {path}: a {cls} appears twice")
        depth -= 1

    def chars(data: str) -> None:
        if depth == 4:
            texts.append(data)

    _parse_stream(path, blocks, start, end, chars)
    if not seq.isdigit():
        raise StoreError(f"snapshot {path}: no seq")
    return int(seq)


def _column(path: Path, cls: str, tag: str, spec: FieldSpec | None, text: str, rows: int) -> list:
    """The values of one column of a block (``spec`` None for the refs); StoreError if bad."""
    lines = text.split("\n")
    if len(lines) != rows:
        raise StoreError(f"snapshot {path}: {cls} {tag} has {len(lines)} values in a block of {rows}")
    if spec is not None and spec.kind in ("set", "map"):
        return _json_column(path, spec, lines)
    return list(map(_unescaped, lines)) if text[:1] == '"' or '\n"' in text else lines


def block_of(path: Path, cls: str, specs: dict[str, FieldSpec], el: etree._Element) -> tuple[list[str], dict]:
    """The refs and columns of a format-3 ``<rows>`` element read by lxml (fsck's salvage), every
    value checked; StoreError if any is bad."""
    try:
        rows = int(el.get("n") or "")
        refs = None
        columns: dict[str, list] = {}
        for child in el:
            if child.tag == "ref" and refs is None:
                refs = _column(path, cls, "ref", None, child.text or "", rows)
            elif child.tag in specs and child.tag not in columns:
                spec = specs[child.tag]
                columns[child.tag] = column = _column(path, cls, child.tag, spec, child.text or "", rows)
                if not all(map(spec.check, column)):
                    raise StoreError(f"snapshot {path}: {cls} {child.tag} has a bad value")
            else:
                raise StoreError(f"snapshot {path}: unexpected {child.tag!r} in a block of {cls}")
    except (ValueError, TypeError) as exc:
        raise StoreError(f"snapshot {path}: unreadable block of {cls} ({exc!r})") from exc
    if refs is None:
        raise StoreError(f"snapshot {path}: a block of {cls} without refs")
    return refs, columns


def _json_column(path: Path, spec: FieldSpec, lines: list[str]) -> list:
    """A set or map column: each distinct line decoded and checked once; equal values of the
    block are one object."""
    decoded = {}
    for line in dict.fromkeys(lines):
        value = decoded[line] = json.loads(_unescaped(line), object_pairs_hook=_unique_keys)
        if not spec.check(value):
            raise StoreError(f"snapshot {path}: {spec.name} has a bad value {line!r}")
    return list(map(decoded.__getitem__, lines))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError(f"a map has a key twice: {pairs!r}")
    return result


def _decode_v1(path: Path, root: etree._Element, classes: Classes, sink: Sink) -> int:
    for table in root.iterchildren(etree.Element):
        cls = table.get("class")
        specs = classes[cls]
        for obj in table.iterchildren(etree.Element):
            ref = obj.get("ref")
            fields: dict[str, object] = {}
            for el in obj.iterchildren(etree.Element):
                fields[el.tag] = _decode_field(path, cls, ref, el, specs[el.tag].kind)
            if not sink.row(cls, ref, fields):
                raise StoreError(f"snapshot {path}: {cls} {ref} appears twice")
    return int(root.get("seq"))


def key_of(el: etree._Element) -> str:
    """The key of a map entry element (format 2; base64 undone)."""
    key = el.get("k")
    return _unb64(key) if el.get("k-enc") == B64 else key


def text_of(el: etree._Element) -> str:
    """The text of a value element (base64 undone)."""
    text = el.text or ""
    if el.get("enc") == B64:
        return _unb64(text)
    return text


def _decode_field(path: Path, cls: str, ref: str, el: etree._Element, kind: str) -> object:
    try:
        if kind == "set":
            return [text_of(item) for item in el.iterchildren(etree.Element)]
        if kind == "map":
            result: dict[str, str] = {}
            for entry in el.iterchildren(etree.Element):
                key = entry.get("key")
                if entry.get("key-enc") == B64:
                    key = _unb64(key)
                if key in result:
                    raise StoreError(f"snapshot {path}: {cls} {ref} {el.tag} has key {key!r} twice")
                result[key] = text_of(entry)
            return result
        return text_of(el)
    except (ValueError, UnicodeDecodeError) as exc:  # bad base64 / UTF-8 inside enc="b64"
        raise StoreError(f"snapshot {path}: {cls} {ref} {el.tag}: bad base64 value ({exc})") from exc
