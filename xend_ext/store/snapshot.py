"""The snapshot: the whole state as one XML file (``state.xml``), replaced atomically.

Shape (one table per described class, one element per object named like its class,
one child per field; sets hold ``<item>``, maps hold ``<entry key="...">``)::

    <xend-ext-state format="1" seq="1234">
      <table class="host">
        <host ref="OpaqueRef:...">
          <name_label>x</name_label>
          <host_CPUs><item>OpaqueRef:a</item></host_CPUs>
          <other_config><entry key="k">v</entry></other_config>
        </host>
      </table>
    </xend-ext-state>

``seq`` is the last journal sequence number the snapshot includes.  Text XML 1.0
cannot carry (control characters, lone surrogates) is stored as base64 of its UTF-8
(``surrogatepass``) with ``enc="b64"`` on the element (``key-enc="b64"`` for a map key),
so every Python string round-trips.

The file is validated against the RelaxNG grammar from :mod:`.schema` when loaded, and
also before it is written: a snapshot we could not load later must never replace a
good one (the journal it would make redundant is kept instead).  The parser is
hardened: no DTD, no entities, no network, no huge-tree mode.

Replacing is done in steps the store runs in order, and which the fault-injection
tests call one by one: :func:`serialize`, :func:`write_temp` (temp file in the same
directory, fsync), :func:`commit` (rename over ``state.xml``, fsync the directory).
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from lxml import etree

from .errors import StoreError
from .fileio import fsync_dir, sync, write_all
from .schema import B64, FORMAT, ROOT, Classes, xml_unsafe

__all__ = [
    "SNAPSHOT_NAME",
    "TEMP_NAME",
    "Tables",
    "Validator",
    "commit",
    "load",
    "remove_temp",
    "serialize",
    "write_temp",
]

SNAPSHOT_NAME = "state.xml"
TEMP_NAME = ".state.xml.tmp"

Tables = dict[str, dict[str, dict[str, object]]]


class Validator:
    """The compiled grammar, one per thread (lxml validators are not shared across threads)."""

    def __init__(self, rng_text: str):
        self._rng = rng_text.encode("utf-8")
        self._local = threading.local()
        self.get()  # fail early if the grammar itself is broken

    def get(self) -> etree.RelaxNG:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = etree.RelaxNG(etree.fromstring(self._rng))
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


def serialize(tables: Tables, seq: int, classes: Classes, validator: Validator) -> bytes:
    """The snapshot document for ``tables`` at ``seq``, validated; raises StoreError."""
    unknown = set(tables) - set(classes)
    if unknown:
        raise StoreError(f"snapshot: unknown class(es) {', '.join(sorted(unknown))}")
    root = etree.Element(ROOT, format=FORMAT, seq=str(int(seq)))
    sub = etree.SubElement
    for cls in sorted(classes):
        specs = classes[cls]
        table = sub(root, "table", {"class": cls})
        objects = tables.get(cls) or {}
        for ref in sorted(objects):
            if type(ref) is not str or xml_unsafe(ref):
                raise StoreError(f"snapshot: {cls} reference {ref!r} cannot be stored")
            fields = objects[ref]
            obj = sub(table, cls, ref=ref)
            seen = 0
            for fname, spec in specs.items():
                if fname not in fields:
                    continue
                seen += 1
                value = fields[fname]
                if not spec.check(value):
                    raise StoreError(
                        f"snapshot: {cls} {ref} field {fname} ({spec.kind}) has bad value {value!r}"
                    )
                el = sub(obj, fname)
                if spec.kind == "set":
                    for item in value:  # type: ignore[union-attr]
                        _put_text(sub(el, "item"), item)
                elif spec.kind == "map":
                    for key, val in value.items():  # type: ignore[union-attr]
                        entry = sub(el, "entry")
                        if xml_unsafe(key):
                            entry.set("key", _b64(key))
                            entry.set("key-enc", B64)
                        else:
                            entry.set("key", key)
                        _put_text(entry, val)
                else:
                    _put_text(el, value)  # type: ignore[arg-type]
            if seen != len(fields):
                extra = sorted(set(fields) - set(specs))
                raise StoreError(f"snapshot: {cls} {ref} has unknown field(s) {', '.join(extra)}")
    rng = validator.get()
    if not rng.validate(root):
        raise StoreError(f"snapshot would not match the state schema: {rng.error_log.last_error}")
    body = etree.tostring(root, encoding="UTF-8", pretty_print=True, xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


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


def load(path: Path, classes: Classes, validator: Validator) -> tuple[Tables, int]:
    """Parse, validate and decode a snapshot; raise StoreError naming the file if bad."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read snapshot {path}: {exc.strerror or exc}") from exc
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise StoreError(f"snapshot {path} is not well-formed XML: {exc}") from exc
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise StoreError(f"snapshot {path} has a DOCTYPE/DTD, which a state file never has")
    rng = validator.get()
    if not rng.validate(tree):
        raise StoreError(
            f"snapshot {path} does not match the state schema: {rng.error_log.last_error}"
        )
    root = tree.getroot()
    tables: Tables = {cls: {} for cls in classes}
    for table in root.iterchildren(etree.Element):
        cls = table.get("class")
        specs = classes[cls]
        objects = tables[cls]
        for obj in table.iterchildren(etree.Element):
            ref = obj.get("ref")
            if ref in objects:
                raise StoreError(f"snapshot {path}: {cls} {ref} appears twice")
            fields: dict[str, object] = {}
            for el in obj.iterchildren(etree.Element):
                fields[el.tag] = _decode_field(path, cls, ref, el, specs[el.tag].kind)
            objects[ref] = fields
    return tables, int(root.get("seq"))


def _text(el: etree._Element) -> str:
    text = el.text or ""
    if el.get("enc") == B64:
        return _unb64(text)
    return text


def _decode_field(path: Path, cls: str, ref: str, el: etree._Element, kind: str) -> object:
    try:
        if kind == "set":
            return [_text(item) for item in el.iterchildren(etree.Element)]
        if kind == "map":
            result: dict[str, str] = {}
            for entry in el.iterchildren(etree.Element):
                key = entry.get("key")
                if entry.get("key-enc") == B64:
                    key = _unb64(key)
                if key in result:
                    raise StoreError(f"snapshot {path}: {cls} {ref} {el.tag} has key {key!r} twice")
                result[key] = _text(entry)
            return result
        return _text(el)
    except (ValueError, UnicodeDecodeError) as exc:  # bad base64 / UTF-8 inside enc="b64"
        raise StoreError(f"snapshot {path}: {cls} {ref} {el.tag}: bad base64 value ({exc})") from exc
