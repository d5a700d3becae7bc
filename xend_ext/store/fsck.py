"""``xend-ext fsck``: check a stopped server's state directory, and repair it if asked.

Checking reads everything as a start would, and more strictly: the snapshot's checksum and
its grammar (always validated here), every journal record's checksum, order and effect.

Repairing keeps everything before the damage and says what it dropped.  The damaged file is
first copied into ``damaged-<time>/`` in the state directory.  A damaged journal record: the
file is cut just before it and later journal files are moved aside (their records came after
the damage and may depend on what is lost).  A damaged snapshot: the objects before the
first one that cannot be read are kept and written as a new snapshot (same seq); when the
checksum alone fails and every object reads correctly, all are kept and the report says the
damage could not be located.  Records that then refer to a dropped object are damage in turn
and handled as above.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lxml import etree

from . import Store, journal, snapshot
from .errors import JournalDamaged, SnapshotDamaged, StoreError
from .schema import FORMAT_V2, Description, normalize

__all__ = ["fsck"]


def fsck(state_dir: Path, description: Description, *, repair: bool = False,
         say: Callable[[str], None] = print) -> int:
    """0 when the state is sound (or was repaired), 1 when damage was found and not repaired."""
    store = Store(state_dir, description, verify=True)
    if not (state_dir / snapshot.SNAPSHOT_NAME).exists() and not journal.list_files(state_dir):
        raise StoreError(f"{state_dir} holds no xend-ext state (no state.xml, no journal file)")
    aside: Path | None = None
    repaired = False
    for _round in range(1000):  # each round repairs one damage; a state has far fewer files
        try:
            tables, seq = store.open()
        except (SnapshotDamaged, JournalDamaged) as damage:
            say(f"damaged: {damage.why} ({_where(damage)})")
            if not repair:
                say("run again with --repair to keep everything before the damage")
                return 1
            aside = aside or _aside_dir(state_dir)
            if isinstance(damage, JournalDamaged):
                _cut_journal(state_dir, damage, aside, say)
            else:
                _salvage_snapshot(state_dir, damage, description, aside, say)
            repaired = True
            store = Store(state_dir, description, verify=True)
            continue
        asyncio.run(store.close())  # unlocks; writes nothing (no capture registered)
        count = sum(len(rows) for rows in tables.values())
        files = journal.list_files(state_dir)
        say(f"{state_dir}: {count} objects, last record {seq}, {len(files)} journal file(s): "
            + ("repaired" if repaired else "no damage"))
        return 0
    raise StoreError("fsck: too many repairs in a row; restore the state directory from a backup")


def _where(damage: SnapshotDamaged | JournalDamaged) -> str:
    if isinstance(damage, JournalDamaged):
        return f"{damage.path.name} line {damage.lineno}, record {damage.seq}"
    return damage.path.name


def _aside_dir(state_dir: Path) -> Path:
    aside = state_dir / time.strftime("damaged-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(mode=0o700, exist_ok=True)
    return aside


def _cut_journal(state_dir: Path, damage: JournalDamaged, aside: Path, say: Callable[[str], None]) -> None:
    path = damage.path
    shutil.copy2(path, aside / path.name)
    with open(path, "rb") as fh:
        fh.seek(damage.offset)
        dropped = fh.read().count(b"\n") or 1
    later = [jf.path for jf in journal.list_files(state_dir) if jf.path.name > path.name]
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, damage.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    moved = 0
    for other in later:
        moved += other.read_bytes().count(b"\n")
        os.replace(other, aside / other.name)
    os.sync()
    say(f"repaired: kept {path.name} up to line {damage.lineno - 1} (records before {damage.seq}); "
        f"dropped {dropped} line(s) from line {damage.lineno}"
        + (f" and {len(later)} later journal file(s) ({moved} record(s))" if later else "")
        + f"; the originals are in {aside}")


def _salvage_snapshot(state_dir: Path, damage: SnapshotDamaged, description: Description, aside: Path,
                      say: Callable[[str], None]) -> None:
    path = damage.path
    classes = normalize(description)
    shutil.copy2(path, aside / path.name)
    data = path.read_bytes()
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    root = etree.fromstring(data, parser)
    fmt = root.get("format") if root is not None else None
    if fmt not in (snapshot.FORMAT, FORMAT_V2) or not (root.get("seq") or "").isdigit():
        raise StoreError(f"{path}: cannot find the objects in it (not a format-{snapshot.FORMAT} or "
                         f"{FORMAT_V2} snapshot); restore it from a backup (a copy is in {aside})")
    tables: snapshot.Tables = {cls: {} for cls in classes}
    kept = total = 0
    first_bad = ""
    for ref, cls, fields in (_blocks if fmt == snapshot.FORMAT else _objects)(path, root, classes):
        total += 1
        if first_bad:
            continue
        if fields is None or ref is None or ref in tables[cls]:
            first_bad = f"{cls} {ref}" if ref is not None else f"a block of {cls}"
            continue
        tables[cls][ref] = fields
        kept += 1
    seq = int(root.get("seq"))
    validator = snapshot.Validator(description)
    data = snapshot.serialize(tables, seq, classes, validator)
    snapshot.commit(state_dir, snapshot.write_temp(state_dir, data))
    broken = parser.error_log.filter_from_errors()
    if broken:
        say(f"repaired: kept the {kept} object(s) of {path.name} read before line {broken[0].line}, where it "
            f"stops being XML ({broken[0].message}); dropped everything from there on"
            + (f" and {total - kept} object(s) from {first_bad} on" if first_bad else "")
            + f"; the original is in {aside}")
    elif first_bad:
        say(f"repaired: kept the {kept} object(s) of {path.name} before {first_bad}; dropped {total - kept} "
            f"object(s) from there on; the original is in {aside}")
    else:
        say(f"repaired: every one of the {kept} object(s) of {path.name} reads correctly, so the damage "
            f"could not be located: all kept with a new checksum, check them; the original is in {aside}")


def _blocks(path: Path, root: etree._Element, classes: dict) -> Iterator[tuple[str | None, str, dict | None]]:
    """(ref, class, fields) of each object of a format-3 snapshot, in order; fields None for each
    object of a block that does not read (ref None when the refs themselves do not)."""
    for el in root.iter("rows"):
        table = el.getparent()
        cls = str(table.get("class")) if table is not None else "?"
        try:
            if cls not in classes:
                raise StoreError(f"unknown class {cls}")
            refs, columns = snapshot.block_of(path, cls, classes[cls], el)
        except StoreError:
            count = el.get("n") or ""
            for _ in range(int(count) if count.isdigit() else 1):
                yield None, cls, None
            continue
        for k, ref in enumerate(refs):
            yield ref, cls, {name: column[k] for name, column in columns.items()}


def _objects(path: Path, root: etree._Element, classes: dict) -> Iterator[tuple[str | None, str, dict | None]]:
    """(ref, class, fields) of each object of a format-2 snapshot; fields None if it does not read."""
    for el in root.iter(*classes):
        fields = _object(el, classes[el.tag]) if el.getparent() is not None else None
        yield el.get("ref"), el.tag, fields


def _object(el: etree._Element, specs: dict) -> dict | None:
    """The fields of one format-2 object element, or None if any of them is bad."""
    fields: dict[str, object] = {}
    try:
        for name, value in el.attrib.items():
            if name == "ref":
                continue
            spec = specs[name]
            if spec.kind in ("set", "map"):
                if value != "":
                    return None
                fields[name] = [] if spec.kind == "set" else {}
            else:
                fields[name] = value
        for child in el:
            name = child.get("f")
            text = snapshot.text_of(child)
            if child.tag == "s":
                fields.setdefault(name, []).append(text)  # type: ignore[union-attr]
            elif child.tag == "m":
                key = snapshot.key_of(child)
                fields.setdefault(name, {})[key] = text  # type: ignore[index]
            elif child.tag == "v":
                fields[name] = text
            else:
                return None
        if not all(specs[name].check(value) for name, value in fields.items()):
            return None
    except (KeyError, ValueError, UnicodeDecodeError, TypeError):
        return None
    return fields
