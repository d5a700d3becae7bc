"""The store: journal + snapshot on real files with real fsyncs.

Nothing is mocked; the only substitutions are the named fault-injection tests, which
either replace the store's low-level write/fsync function or call the compaction steps
one by one and then stop the store the way a killed process would (``Store._crash``).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from xend_ext import sxp
from xend_ext.store import StateDirLocked, Store, StoreError, WriteRefused, fileio, journal, snapshot
from xend_ext.store.schema import FORMAT_V2, normalize, relaxng

ROOT = Path(__file__).resolve().parents[1]

DESC: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "VM": [
        ("uuid", "string", ()),
        ("name_label", "string", ()),
        ("VCPUs_max", "int", ()),
        ("is_a_template", "bool", ()),
        ("power_state", "enum", ("Halted", "Paused", "Running", "Suspended")),
        ("start_time", "datetime", ()),
        ("weight", "float", ()),
        ("resident_on", "ref", ()),
        ("groups", "set", ()),
        ("other_config", "map", ()),
    ],
    "VM_group": [
        ("uuid", "string", ()),
        ("name_label", "string", ()),
        ("placement", "enum", ("anti_affinity", "normal")),
        ("VMs", "set", ()),
    ],
    "session": [("uuid", "string", ()), ("this_host", "ref", ())],
}

# Text that XML 1.0 cannot carry, line breaks of every kind, XML and SXP specials.
NASTY = "\x00\x01\x08\x0b\x0c\x1f\x7f\x85\u2028\u2029\ufeff\ufffe\uffff\ud800\udfff\r\n\t <&>\"']]>#()\\é😀"


def vm(i: int, **fields: object) -> dict[str, object]:
    """A complete encoded VM record."""
    record: dict[str, object] = {
        "uuid": f"uuid-{i}",
        "name_label": f"vm {i}",
        "VCPUs_max": str(i % 8 + 1),
        "is_a_template": "false",
        "power_state": "Halted",
        "start_time": "20250319T04:16:24Z",
        "weight": "1.5",
        "resident_on": "OpaqueRef:NULL",
        "groups": [],
        "other_config": {},
    }
    record.update(fields)
    return record


def ref(i: int) -> str:
    return f"OpaqueRef:{i:08d}-0000-4000-8000-000000000000"


def apply_ref_model(tables: dict, op: tuple) -> None:
    """Reference semantics of the journal ops, written independently of the store."""
    name, cls, obj_ref = op[0], op[1], op[2]
    table = tables[cls]
    if name == "create":
        table[obj_ref] = copy.deepcopy(op[3])
    elif name == "destroy":
        table.pop(obj_ref, None)
    elif name == "set":
        table[obj_ref][op[3]] = copy.deepcopy(op[4])
    elif name == "map_add":
        table[obj_ref][op[3]][op[4]] = op[5]
    elif name == "map_remove":
        table[obj_ref][op[3]].pop(op[4], None)
    elif name == "set_add":
        if op[4] not in table[obj_ref][op[3]]:
            table[obj_ref][op[3]].append(op[4])
    elif name == "set_remove":
        if op[4] in table[obj_ref][op[3]]:
            table[obj_ref][op[3]].remove(op[4])


class Model:
    """Stands in for the object model: applies each op to dicts and appends it."""

    def __init__(self, store: Store, tables: dict, seq: int, *, capture: bool = True):
        self.store = store
        self.tables = tables
        self.seq = seq
        if capture:
            store.set_capture(self.capture)

    def do(self, op: tuple) -> int:
        apply_ref_model(self.tables, op)
        self.seq = self.store.append(op)
        return self.seq

    def capture(self) -> tuple[dict, int]:
        return copy.deepcopy(self.tables), self.seq


def open_store(path: Path, *, capture: bool = True, **kw: int) -> tuple[Store, Model]:
    store = Store(path, DESC, **kw)
    tables, seq = store.open()
    return store, Model(store, tables, seq, capture=capture)


def reopen(path: Path, desc: dict = DESC) -> tuple[dict, int]:
    """Open, read the state and close without writing anything."""
    store = Store(path, desc)
    tables, seq = store.open()
    asyncio.run(store.close())
    return tables, seq


def journal_files(path: Path) -> list[Path]:
    return sorted(path.glob("journal-*.sxp"))


def disk_records(path: Path) -> list[tuple[int, list]]:
    """Every record of every journal file, read and checked independently of the store."""
    out = []
    for f in journal_files(path):
        for line in f.read_bytes().splitlines():
            m = re.fullmatch(rb"\((\d+) ([0-9a-f]{8}) (\(.*\))\)", line)
            assert m, line
            assert zlib.crc32(m.group(1) + b" " + m.group(3)) == int(m.group(2), 16)
            out.append((int(m.group(1)), sxp.loads(m.group(3).decode())))
    return out


def empty_tables() -> dict:
    return {cls: {} for cls in DESC}


# ---------------------------------------------------------------------- basics


def test_open_creates_the_directory_and_empty_tables(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    store = Store(state, DESC)
    assert store.open() == (empty_tables(), 0)
    assert (state / "lock").read_text().strip() == str(os.getpid())
    asyncio.run(store.close())
    assert reopen(state) == (empty_tables(), 0)


def every_op_sequence() -> list[tuple]:
    a, b, g = ref(1), ref(2), ref(3)
    return [
        ("create", "VM", a, vm(1, groups=["x"], other_config={"k": "v"})),
        ("create", "VM", b, vm(2)),
        ("create", "VM_group", g, {"uuid": "g", "name_label": "web", "placement": "normal", "VMs": []}),
        ("create", "session", ref(9), {}),  # every field missing: the model fills defaults
        ("set", "VM", a, "name_label", "renamed"),
        ("set", "VM", a, "VCPUs_max", "-12"),
        ("set", "VM", a, "is_a_template", "true"),
        ("set", "VM", a, "power_state", "Running"),
        ("set", "VM", a, "start_time", "20260101T00:00:00Z"),
        ("set", "VM", a, "weight", "0.25"),
        ("set", "VM", a, "resident_on", ref(7)),
        ("set", "VM", a, "groups", [g, "y"]),
        ("set", "VM", b, "other_config", {"a": "1", "b": "2"}),
        ("set", "VM", b, "groups", []),
        ("map_add", "VM", a, "other_config", "new", "1"),
        ("map_add", "VM", a, "other_config", "new", "2"),  # overwrite
        ("map_remove", "VM", b, "other_config", "a"),
        ("map_remove", "VM", b, "other_config", "absent"),
        ("set_add", "VM_group", g, "VMs", a),
        ("set_add", "VM_group", g, "VMs", b),
        ("set_add", "VM_group", g, "VMs", a),  # already there
        ("set_remove", "VM", a, "groups", "y"),
        ("set_remove", "VM", a, "groups", "absent"),
        ("create", "VM", ref(4), vm(4)),
        ("destroy", "VM", ref(4)),
        ("destroy", "VM", ref(99)),  # destroying what is gone is harmless
    ]


@pytest.mark.parametrize("via", ["journal", "snapshot", "snapshot+journal"])
def test_every_op_and_kind_round_trips(tmp_path: Path, via: str) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path, capture=via != "journal")
        ops = every_op_sequence()
        half = len(ops) // 2 if via == "snapshot+journal" else len(ops)
        for op in ops[:half]:
            model.do(op)
        if via == "snapshot+journal":
            await store.compact()
            for op in ops[half:]:
                model.do(op)
            await store.durable(model.seq)
            store._crash()  # no final snapshot: the tail must come from the journal
        else:
            await store.close()
        return model.tables

    expected = asyncio.run(main())
    assert expected["VM"][ref(1)]["other_config"] == {"k": "v", "new": "2"}
    assert expected["VM"][ref(1)]["groups"] == [ref(3)]
    assert expected["VM"][ref(2)]["other_config"] == {"b": "2"}
    assert expected["VM_group"][ref(3)]["VMs"] == [ref(1), ref(2)]
    assert ref(4) not in expected["VM"]
    tables, seq = reopen(tmp_path)
    assert tables == expected
    assert seq == len(every_op_sequence())
    if via == "journal":
        assert not (tmp_path / "state.xml").exists()
    if via == "snapshot":
        assert journal_files(tmp_path) == []


@pytest.mark.parametrize("via", ["journal", "snapshot"])
def test_unicode_and_control_characters_round_trip(tmp_path: Path, via: str) -> None:
    nasty_ref = "OpaqueRef:é😀 <&>"
    records = {
        ref(1): vm(
            1,
            name_label=NASTY,
            uuid="",
            groups=[NASTY, "", " ", "\x00"],
            other_config={NASTY: NASTY, "": "", " ": "\n", "\ud800": "x"},
        ),
        nasty_ref: vm(2, name_label="  leading and trailing  ", resident_on=NASTY),
        ref(3): vm(3, name_label="\n", other_config={"k\r\n": "\r"}),
    }

    async def main() -> None:
        store, model = open_store(tmp_path, capture=via == "snapshot")
        for r, record in records.items():
            model.do(("create", "VM", r, record))
        model.do(("map_add", "VM", ref(3), "other_config", "\x1f", NASTY))
        model.do(("set_add", "VM", ref(3), "groups", "\udfff"))
        records[ref(3)]["other_config"]["\x1f"] = NASTY
        records[ref(3)]["groups"].append("\udfff")
        await store.close()

    asyncio.run(main())
    tables, _ = reopen(tmp_path)
    assert tables["VM"] == records
    if via == "snapshot":
        text = (tmp_path / "state.xml").read_bytes()
        # what XML cannot carry is escaped: scalars, and sets and maps holding a surrogate
        assert b'<name_label>"\\x00\\x01' in text and b'<other_config>"{' in text


def test_ops_appended_before_the_loop_runs_are_flushed(tmp_path: Path) -> None:
    store, model = open_store(tmp_path, capture=False)
    seq = model.do(("create", "VM", ref(1), vm(1)))  # start-up code, no running loop

    async def main() -> None:
        await store.durable(seq)
        assert [s for s, _ in disk_records(tmp_path)] == [1]
        await store.close()

    asyncio.run(main())
    assert reopen(tmp_path)[0] == model.tables


def test_append_rejects_malformed_ops(tmp_path: Path) -> None:
    store, model = open_store(tmp_path)
    model.do(("create", "VM", ref(1), vm(1)))
    bad_ops = [
        ("create", "Nope", ref(2), {}),
        ("create", "VM", ref(2), {"bogus": "1"}),
        ("create", "VM", ref(2), [("uuid", "x")]),
        ("create", "VM", "", {}),
        ("create", "VM", "OpaqueRef:\x00", {}),
        ("create", "VM", 5, {}),
        ("set", "VM", ref(1), "VCPUs_max", "two"),
        ("set", "VM", ref(1), "VCPUs_max", 2),
        ("set", "VM", ref(1), "VCPUs_max", "٣"),  # a digit, but not an ASCII one
        ("set", "VM", ref(1), "is_a_template", "True"),
        ("set", "VM", ref(1), "power_state", "Exploded"),
        ("set", "VM", ref(1), "groups", "a"),
        ("set", "VM", ref(1), "groups", ["a", 1]),
        ("set", "VM", ref(1), "other_config", {"a": 1}),
        ("set", "VM", ref(1), "other_config", [("a", "b")]),
        ("set", "VM", ref(1), "name_label", None),
        ("set", "VM", ref(1), "nope", "x"),
        ("set", "VM", ref(1), "name_label"),
        ("map_add", "VM", ref(1), "groups", "k", "v"),
        ("map_add", "VM", ref(1), "other_config", "k"),
        ("set_add", "VM", ref(1), "other_config", "x"),
        ("set_remove", "VM", ref(1), "groups", 3),
        ("destroy", "Nope", ref(1)),
        ("explode", "VM", ref(1)),
        (),
        "create",
    ]
    for op in bad_ops:
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies per op
            store.append(op)  # type: ignore[arg-type]
    assert store.stats()["last_seq"] == 1
    asyncio.run(store.close())
    assert reopen(tmp_path)[0] == model.tables


def test_journal_line_format(tmp_path: Path) -> None:
    async def main() -> None:
        store, model = open_store(tmp_path, capture=False)
        model.do(("create", "VM", ref(1), vm(1, name_label="two words")))
        model.do(("set", "VM", ref(1), "other_config", {"k": "v w"}))
        await store.close()

    asyncio.run(main())
    [path] = journal_files(tmp_path)
    assert path.name == "journal-00000000000000000001.sxp"
    lines = path.read_bytes().decode().splitlines()
    assert lines[1].startswith("(2 ") and lines[1].endswith(
        ' (set VM OpaqueRef:00000001-0000-4000-8000-000000000000 other_config ((k "v w"))))'
    )
    assert sxp.loads(lines[0])[2][:3] == ["create", "VM", ref(1)]  # a record is itself SXP
    assert [s for s, _ in disk_records(tmp_path)] == [1, 2]


def test_seq_continues_across_restarts_in_the_same_file(tmp_path: Path) -> None:
    expected = empty_tables()
    for round_no in range(3):

        async def main(n: int = round_no) -> None:
            store, model = open_store(tmp_path, capture=False)
            assert model.seq == n * 2
            model.tables = expected
            model.do(("create", "VM", ref(n), vm(n)))
            await store.durable(model.do(("set", "VM", ref(n), "name_label", f"r{n}")))
            await store.close()

        asyncio.run(main())
    assert [s for s, _ in disk_records(tmp_path)] == list(range(1, 7))
    assert len(journal_files(tmp_path)) == 1
    assert reopen(tmp_path) == (expected, 6)


def test_unusable_state_dir_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create state directory"):
        Store(tmp_path / "file", DESC).open()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    async def main() -> None:
        store, model = open_store(tmp_path)
        seq = model.do(("create", "VM", ref(1), vm(1)))
        await store.close()
        await store.close()
        await store.durable(seq)  # already durable: fine
        with pytest.raises(StoreError, match="closed"):
            store.append(("destroy", "VM", ref(1)))
        with pytest.raises(StoreError):
            store.open()

    asyncio.run(main())
    asyncio.run(Store(tmp_path / "never-opened", DESC).close())


# ---------------------------------------------------------------------- durability and group commit


def test_durable_means_on_disk(tmp_path: Path) -> None:
    async def main() -> None:
        store, model = open_store(tmp_path, capture=False)
        for i in range(5):
            seq = model.do(("create", "VM", ref(i), vm(i)))
            await store.durable(seq)
            assert [s for s, _ in disk_records(tmp_path)] == list(range(1, seq + 1))
        assert store.stats()["fsyncs"] == 5
        await store.close()

    asyncio.run(main())


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    async def main() -> None:
        store, model = open_store(tmp_path, capture=False)
        await store.durable(model.do(("create", "VM", ref(0), vm(0))))
        before = store.stats()["fsyncs"]

        async def one(i: int) -> int:
            seq = model.do(("set", "VM", ref(0), "name_label", f"n{i}"))
            await store.durable(seq)
            return seq

        seqs = await asyncio.gather(*(one(i) for i in range(200)))
        fsyncs = store.stats()["fsyncs"] - before
        assert fsyncs < 20, fsyncs
        assert [s for s, _ in disk_records(tmp_path)] == list(range(1, max(seqs) + 1))

        async def writer(w: int) -> None:  # 16 clients, each waiting for its own reply
            for j in range(20):
                await store.durable(model.do(("set", "VM", ref(0), "name_label", f"{w}.{j}")))

        before = store.stats()["fsyncs"]
        await asyncio.gather(*(writer(w) for w in range(16)))
        fsyncs = store.stats()["fsyncs"] - before
        assert fsyncs < 16 * 20 // 2, fsyncs
        stats = store.stats()
        assert stats["durable_seq"] == stats["last_seq"] == 1 + 200 + 320
        assert stats["journal_records"] == 521
        await store.close()

    asyncio.run(main())
    assert reopen(tmp_path)[0]["VM"][ref(0)]["name_label"].count(".") == 1


def test_fault_injection_refused_write_is_truncated_and_rolled_back(tmp_path: Path) -> None:
    """A write the disk refuses (ENOSPC half way) leaves nothing on disk; the store drops that
    batch and every op appended after it, tells the model from which seq to undo, and goes on."""

    async def main() -> list[int]:
        store, model = open_store(tmp_path, capture=False)
        rollbacks: list[int] = []
        store.set_rollback(rollbacks.append)
        await store.durable(model.do(("create", "VM", ref(1), vm(1))))
        [path] = journal_files(tmp_path)
        size = path.stat().st_size

        def half_then_enospc(fd: int, data: bytes) -> None:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        store._write_all = half_then_enospc
        seq = model.do(("set", "VM", ref(1), "name_label", "lost"))
        later = model.do(("set", "VM", ref(1), "VCPUs_max", "7"))  # appended while the first waits
        with pytest.raises(WriteRefused, match="No space left") as info:
            await store.durable(seq)
        assert info.value.cause == "No space left on device"
        with pytest.raises(WriteRefused):
            await store.durable(later)  # dropped with it
        assert path.stat().st_size == size  # the half record is gone
        assert rollbacks == [1] and store.stats()["last_seq"] == 1
        store._write_all = fileio.write_all
        assert store.append(("set", "VM", ref(1), "VCPUs_max", "4")) == 2  # numbering goes on from 1
        await store.durable(2)
        assert [s for s, _ in disk_records(tmp_path)] == [1, 2]
        await store.close()
        return rollbacks

    asyncio.run(main())
    tables, seq = reopen(tmp_path)
    assert seq == 2
    assert tables["VM"][ref(1)]["name_label"] == "vm 1"
    assert tables["VM"][ref(1)]["VCPUs_max"] == "4"


@pytest.mark.parametrize("capture", [False, True])
def test_fault_injection_failed_fsync_is_never_a_success(tmp_path: Path, capture: bool) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path, capture=capture)
        await store.durable(model.do(("create", "VM", ref(1), vm(1))))

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        store._sync = eio
        with pytest.raises(StoreError, match="fsync"):
            await store.durable(model.do(("set", "VM", ref(1), "name_label", "x")))
        store._sync = fileio.sync  # too late: after a failed fsync nothing is trusted
        with pytest.raises(StoreError, match="fsync"):
            await store.durable(model.do(("set", "VM", ref(1), "name_label", "y")))
        if capture:
            await store.close()  # the final snapshot holds everything: no error
        else:
            with pytest.raises(StoreError):
                await store.close()
        return model.tables

    expected = asyncio.run(main())
    tables, _ = reopen(tmp_path)  # the lock was released either way
    if capture:
        assert tables == expected


# ---------------------------------------------------------------------- recovery


def build_journal(path: Path, n: int) -> list[dict]:
    """n durable ops, one fsync each; returns the state after each op (index 0 = empty)."""

    async def main() -> list[dict]:
        store, model = open_store(path, capture=False)
        states = [copy.deepcopy(model.tables)]
        for i in range(n):
            await store.durable(model.do(("create", "VM", ref(i), vm(i, name_label=f"é {i} {NASTY}"))))
            states.append(copy.deepcopy(model.tables))
        store._crash()
        return states

    return asyncio.run(main())


def test_torn_last_record_is_ignored_at_every_offset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    states = build_journal(src, 4)
    [path] = journal_files(src)
    data = path.read_bytes()
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    assert len(data) - last_start > 100
    for cut in range(last_start, len(data)):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(src, work)
        os.truncate(work / path.name, cut)
        store, model = open_store(work)
        assert (model.tables, model.seq) == (states[3], 3), cut
        assert (work / path.name).stat().st_size == last_start  # torn tail truncated away
        model.do(("create", "VM", ref(100), vm(100)))  # and the journal goes on cleanly
        asyncio.run(store.close())
        assert reopen(work)[0] == model.tables
        shutil.rmtree(work)


def test_bad_checksum_on_a_complete_last_line_is_damage(tmp_path: Path) -> None:
    """Newline-terminated, so written whole: a bad checksum there is damage, not a torn write."""
    build_journal(tmp_path, 3)
    [path] = journal_files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(journal.JournalDamaged, match=r"line 3 \(record 3\): checksum mismatch; refusing") as info:
        Store(tmp_path, DESC).open()
    assert (info.value.lineno, info.value.seq, info.value.path) == (3, 3, path)
    assert "xend-ext fsck" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == bytes(data)  # nothing truncated


@pytest.mark.parametrize("line", [1, 2, 3])
def test_damage_before_the_last_record_refuses_to_start(tmp_path: Path, line: int) -> None:
    build_journal(tmp_path, 4)
    [path] = journal_files(tmp_path)
    lines = path.read_bytes().split(b"\n")
    damaged = bytearray(lines[line - 1])
    damaged[len(damaged) // 2] ^= 0x20
    lines[line - 1] = bytes(damaged)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreError, match=rf"{re.escape(path.name)} line {line} \(record {line}\): checksum"):
        Store(tmp_path, DESC).open()
    # the refusal did not change anything and released the lock
    with pytest.raises(StoreError, match="checksum"):
        Store(tmp_path, DESC).open()


def write_records(path: Path, first: int, ops: list[tuple], *, name_seq: int | None = None) -> Path:
    classes = normalize(DESC)
    lines = [
        journal.format_record(first + i, journal.encode_op(op, classes)) for i, op in enumerate(ops)
    ]
    path.mkdir(exist_ok=True)
    f = path / journal.file_name(first if name_seq is None else name_seq)
    f.write_bytes(b"".join(lines))
    return f


def test_replay_of_an_op_on_a_missing_object(tmp_path: Path) -> None:
    write_records(tmp_path, 1, [
        ("destroy", "VM", ref(1)),  # ignored
        ("create", "VM", ref(2), vm(2)),
        ("set", "VM", ref(1), "name_label", "ghost"),
    ])
    with pytest.raises(StoreError, match=r"line 3 \(record 3\): set on VM .* which does not exist"):
        Store(tmp_path, DESC).open()


def test_replay_of_a_second_create(tmp_path: Path) -> None:
    write_records(tmp_path, 1, [("create", "VM", ref(2), vm(2)), ("create", "VM", ref(2), vm(2))])
    with pytest.raises(StoreError, match="already exists"):
        Store(tmp_path, DESC).open()


def test_missing_journal_file_is_detected(tmp_path: Path) -> None:
    write_records(tmp_path, 1, [("create", "VM", ref(1), vm(1)), ("create", "VM", ref(2), vm(2))])
    write_records(tmp_path, 5, [("create", "VM", ref(5), vm(5))])
    with pytest.raises(StoreError, match=r"\(record 3\): found record 5: records are missing"):
        Store(tmp_path, DESC).open()


def test_file_name_must_match_its_first_record(tmp_path: Path) -> None:
    write_records(tmp_path, 2, [("create", "VM", ref(1), vm(1))], name_seq=1)
    with pytest.raises(StoreError, match="out of order"):
        Store(tmp_path, DESC).open()


def test_torn_tail_in_an_older_file_is_corruption(tmp_path: Path) -> None:
    older = write_records(tmp_path, 1, [("create", "VM", ref(1), vm(1)), ("create", "VM", ref(2), vm(2))])
    write_records(tmp_path, 3, [("create", "VM", ref(3), vm(3))])
    os.truncate(older, older.stat().st_size - 5)
    with pytest.raises(StoreError, match="not the last"):
        Store(tmp_path, DESC).open()


def test_records_of_an_unknown_field_refuse_to_start(tmp_path: Path) -> None:
    build_journal(tmp_path, 2)
    smaller = {**DESC, "VM": [f for f in DESC["VM"] if f[0] != "weight"]}
    with pytest.raises(StoreError, match=r"unknown field VM.weight"):
        Store(tmp_path, smaller).open()


def test_stale_snapshot_temp_file_is_removed(tmp_path: Path) -> None:
    build_journal(tmp_path, 1)
    (tmp_path / snapshot.TEMP_NAME).write_text("<half a snapshot")
    assert reopen(tmp_path)[1] == 1
    assert not (tmp_path / snapshot.TEMP_NAME).exists()


# ---------------------------------------------------------------------- locking


def test_lock_refuses_a_second_server(tmp_path: Path) -> None:
    locker = textwrap.dedent(
        """
        import sys
        from xend_ext.store import Store
        store = Store(sys.argv[1], {"host": []})
        store.open()
        print("locked", flush=True)
        sys.stdin.readline()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", locker, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(StateDirLocked) as info:
            Store(tmp_path, DESC).open()
        assert info.value.pid == proc.pid
        assert str(info.value) == (
            f"state directory {tmp_path} is in use by another xend-ext server (pid {proc.pid}); "
            "stop that server or choose another --state-dir"
        )
        assert isinstance(info.value, StoreError)
    finally:
        proc.communicate(b"\n", timeout=30)
    assert reopen(tmp_path)[1] == 0  # the lock went with the process


def test_lock_in_the_same_process(tmp_path: Path) -> None:
    first = Store(tmp_path, DESC)
    first.open()
    with pytest.raises(StateDirLocked, match=rf"\(pid {os.getpid()}\)"):
        Store(tmp_path, DESC).open()
    asyncio.run(first.close())
    assert reopen(tmp_path)[1] == 0


# ---------------------------------------------------------------------- compaction


def test_compaction_when_the_journal_grows(tmp_path: Path) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path, compact_min_bytes=4000)
        model.do(("create", "VM", ref(1), vm(1)))
        for i in range(300):
            await store.durable(model.do(("set", "VM", ref(1), "name_label", f"name {i}")))
        await asyncio.sleep(0)
        while store._compaction_task is not None:
            await store._compaction_task
        stats = store.stats()
        assert stats["compactions"] >= 3, stats
        assert stats["journal_bytes"] < 3 * 4000
        assert len(journal_files(tmp_path)) <= 2
        assert stats["snapshot_seq"] > 200
        store._crash()
        return model.tables

    expected = asyncio.run(main())
    assert reopen(tmp_path)[0] == expected


def test_compact_deletes_covered_journals(tmp_path: Path) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path)
        for i in range(10):
            model.do(("create", "VM", ref(i), vm(i)))
        await store.durable(model.seq)
        await store.compact()
        assert journal_files(tmp_path) == []
        assert store.stats()["snapshot_seq"] == 10
        model.do(("destroy", "VM", ref(3)))
        await store.durable(model.seq)
        assert [p.name for p in journal_files(tmp_path)] == [journal.file_name(11)]
        store.request_compaction()
        while store.stats()["compactions"] < 2:
            await asyncio.sleep(0.01)
        assert journal_files(tmp_path) == []
        store._crash()
        return model.tables

    expected = asyncio.run(main())
    assert reopen(tmp_path) == (expected, 11)
    root = etree.parse(str(tmp_path / "state.xml")).getroot()
    assert root.get("seq") == "11"
    assert [t.get("class") for t in root] == ["VM", "VM_group", "session"]  # empty tables too


def test_fault_injection_compaction_with_unflushed_ops(tmp_path: Path) -> None:
    """Ops captured but not yet written when the journal rotates land in the new file."""

    async def main() -> dict:
        store, model = open_store(tmp_path)
        await store.durable(model.do(("create", "VM", ref(1), vm(1))))
        model.do(("set", "VM", ref(1), "name_label", "buffered"))  # not yet written
        await store.compact()
        await store.durable(model.do(("set", "VM", ref(1), "VCPUs_max", "3")))
        store._crash()
        return model.tables

    expected = asyncio.run(main())
    assert reopen(tmp_path) == (expected, 3)


@pytest.mark.parametrize(
    "stop", ["after_rotate", "after_temp_file", "after_rename", "after_deleting_one_journal"]
)
def test_fault_injection_crash_during_compaction(tmp_path: Path, stop: str) -> None:
    async def main() -> dict:
        loop = asyncio.get_running_loop()
        store, model = open_store(tmp_path)
        for i in range(5):
            model.do(("create", "VM", ref(i), vm(i)))
        await store.durable(model.seq)
        await loop.run_in_executor(store._io, store._io_rotate)  # a second journal file
        for i in range(5):
            model.do(("set", "VM", ref(i), "name_label", f"second {i}"))
        await store.durable(model.seq)
        assert len(journal_files(tmp_path)) == 2

        # The compaction steps, one by one, as Store runs them.
        tables, seq = model.capture()
        await loop.run_in_executor(store._io, store._io_rotate)
        model.do(("destroy", "VM", ref(0)))  # writers carry on meanwhile
        await store.durable(model.seq)
        assert len(journal_files(tmp_path)) == 3
        if stop != "after_rotate":
            data = snapshot.serialize(tables, seq, store._classes, store._validator)
            tmp = snapshot.write_temp(tmp_path, data)
            if stop != "after_temp_file":
                snapshot.commit(tmp_path, tmp)
                if stop == "after_deleting_one_journal":
                    journal_files(tmp_path)[0].unlink()
        store._crash()
        return model.tables

    expected = asyncio.run(main())
    store, model = open_store(tmp_path)
    assert (model.tables, model.seq) == (expected, 11)
    assert not (tmp_path / snapshot.TEMP_NAME).exists()
    model.do(("set", "VM", ref(1), "name_label", "after recovery"))
    asyncio.run(store.close())
    assert reopen(tmp_path) == (model.tables, 12)
    assert journal_files(tmp_path) == []


def test_failed_compaction_keeps_the_journal(tmp_path: Path) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path)
        await store.durable(model.do(("create", "VM", ref(1), vm(1))))
        store.set_capture(lambda: ({"VM": {ref(1): {"VCPUs_max": "many"}}}, model.seq))
        with pytest.raises(StoreError, match="VCPUs_max"):
            await store.compact()
        store.set_capture(lambda: (model.tables, model.seq + 5))
        with pytest.raises(StoreError, match="capture returned seq"):
            await store.compact()

        def broken() -> tuple[dict, int]:
            raise RuntimeError("model bug")

        store.set_capture(broken)
        with pytest.raises(StoreError, match="model bug"):
            await store.compact()
        assert not (tmp_path / "state.xml").exists()
        await store.durable(model.do(("set", "VM", ref(1), "name_label", "still fine")))
        store._crash()
        return model.tables

    expected = asyncio.run(main())
    assert reopen(tmp_path)[0] == expected


def test_failed_final_snapshot_does_not_fail_close(tmp_path: Path) -> None:
    async def main() -> dict:
        store, model = open_store(tmp_path)
        await store.durable(model.do(("create", "VM", ref(1), vm(1))))
        model.do(("set", "VM", ref(1), "name_label", "flushed by close"))
        store.set_capture(lambda: ({"VM": {ref(1): {"VCPUs_max": "many"}}}, model.seq))
        await store.close()  # the journal holds everything; the failure is only logged
        return model.tables

    expected = asyncio.run(main())
    assert not (tmp_path / "state.xml").exists()
    assert reopen(tmp_path)[0] == expected


# ---------------------------------------------------------------------- snapshot validation


@pytest.fixture
def snapshot_dir(tmp_path: Path) -> Path:
    async def main() -> None:
        store, model = open_store(tmp_path)
        model.do(("create", "VM", ref(1), vm(1, other_config={"k": "v"}, groups=["g"])))
        await store.close()

    asyncio.run(main())
    assert journal_files(tmp_path) == []
    return tmp_path


def restamp(path: Path, text: str) -> None:
    """Write ``text`` as the snapshot with a checksum that matches it (a forged, valid file)."""
    body = text[: text.rindex("<!-- crc32 ")].encode()
    path.write_bytes(body + b"<!-- crc32 %08x -->\n" % zlib.crc32(body))


def test_snapshot_shape(snapshot_dir: Path) -> None:
    data = (snapshot_dir / "state.xml").read_bytes()
    text = data.decode()
    digest = snapshot.Validator(DESC).digest
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n'
                           f'<xend-ext-state format="3" seq="1" grammar="{digest}">')
    assert (f'<rows n="1"><ref>{ref(1)}</ref><uuid>uuid-1</uuid><name_label>vm 1</name_label>'
            '<VCPUs_max>2</VCPUs_max>') in text
    assert '<groups>["g"]</groups><other_config>{"k":"v"}</other_config></rows>' in text
    assert '<table class="session">\n</table>' in text
    body, trailer = data[: data.rindex(b"<!--")], data[data.rindex(b"<!--"):]
    assert trailer == b"<!-- crc32 %08x -->\n" % zlib.crc32(body)


def test_blocks_of_rows_and_fields_missing_in_some_objects_round_trip(tmp_path: Path) -> None:
    """More objects than a block holds, and objects without a field (written before it was added)
    between objects with it: each run of objects with the same fields gets blocks of its own."""
    classes = normalize(DESC)
    validator = snapshot.Validator(DESC)
    rows = {ref(i): vm(i, name_label=f"{NASTY} {i}" if i % 7 == 0 else f"vm {i}",
                       groups=[NASTY, "g"] if i % 5 == 0 else [], other_config={NASTY: NASTY, "k": str(i)})
            for i in range(2 * snapshot.ROWS + 10)}
    for i in range(1200, 1300):
        del rows[ref(i)]["weight"]
    tables = {"VM": rows, "VM_group": {}, "session": {}}
    snapshot.commit(tmp_path, snapshot.write_temp(tmp_path, snapshot.serialize(tables, 3, classes, validator)))
    text = (tmp_path / "state.xml").read_text()
    assert text.count("<rows ") == 4
    assert all(f'<rows n="{n}">' in text for n in (1000, 200, 100, 710))
    assert reopen(tmp_path) == (tables, 3)
    store = Store(tmp_path, DESC, verify=True)  # and the grammar takes it
    assert store.open() == (tables, 3)
    asyncio.run(store.close())


def test_format_2_snapshots_of_older_versions_load_and_the_next_is_format_3(tmp_path: Path) -> None:
    classes = normalize(DESC)
    validator = snapshot.Validator(DESC)
    tables = {"VM": {ref(1): vm(1, name_label=NASTY, groups=["g"], other_config={NASTY: "v"}), ref(2): vm(2)},
              "VM_group": {}, "session": {}}
    old = snapshot.serialize(tables, 5, classes, validator, fmt=FORMAT_V2)
    assert b'format="2"' in old and b'<s f="groups">g</s>' in old
    snapshot.commit(tmp_path, snapshot.write_temp(tmp_path, old))

    async def main() -> dict:
        store, model = open_store(tmp_path)
        assert (model.tables, model.seq) == (tables, 5)
        await store.durable(model.do(("set", "VM", ref(2), "name_label", "changed")))
        await store.compact()
        await store.close()
        return model.tables

    expected = asyncio.run(main())
    assert b'format="3"' in (tmp_path / "state.xml").read_bytes()
    assert reopen(tmp_path) == (expected, 6)


def test_snapshot_output_is_deterministic() -> None:
    classes = normalize(DESC)
    validator = snapshot.Validator(DESC)
    tables = {"VM": {ref(i): vm(i) for i in (3, 1, 2)}, "VM_group": {}, "session": {}}
    shuffled = {"session": {}, "VM": dict(reversed(tables["VM"].items()))}
    assert snapshot.serialize(tables, 7, classes, validator) == snapshot.serialize(
        shuffled, 7, classes, validator
    )


def test_schema_is_deterministic_and_valid() -> None:
    text = relaxng(DESC)
    assert text == relaxng(dict(reversed(DESC.items())))
    etree.RelaxNG(etree.fromstring(text.encode()))
    assert 'datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes"' in text


@pytest.mark.parametrize(
    "bad", [{"bad name": []}, {"VM": [("x y", "string", ())]}, {"VM": [("x", "blob", ())]},
            {"VM": [("x", "enum", ())]}, {"VM": [("x", "int", ()), ("x", "int", ())]}]
)
def test_bad_descriptions_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        normalize(bad)


TAMPERING = [
    ("<VCPUs_max>2<", "<VCPUs_max>two<", "schema"),
    ("<is_a_template>false<", "<is_a_template>no<", "schema"),
    ("<is_a_template>false<", "<is_a_template> false<", "schema"),
    ("<power_state>Halted<", "<power_state>Exploded<", "schema"),
    ("<uuid>uuid-1</uuid>", "<uuid>uuid-1</uuid><bogus>x</bogus>", "schema"),
    ('<rows n="1">', '<rows n="1" bogus="x">', "schema"),
    ('<rows n="1">', '<rows n="0">', "schema"),
    ("<uuid>uuid-1</uuid>", "<uuid>uuid-1</uuid><uuid>uuid-2</uuid>", "schema"),
    ('<table class="session">', '<table class="nope"></table><table class="session">', "schema"),
    ('format="3"', 'format="4"', "schema"),
    ('seq="1"', 'seq="-1"', "schema"),
    ("</xend-ext-state>", "", "not well-formed"),
    ('<rows n="1">', '<rows n="2">', "2 values in a block of 1|1 values in a block of 2"),
    ('<groups>["g"]<', '<groups>["g"]\n[]<', "2 values in a block of 1"),
    ('<groups>["g"]<', '<groups>["g",1]<', "bad value"),
    ('<groups>["g"]<', '<groups>"\\xff<', "unreadable"),  # escaped, but not JSON
    ('<other_config>{"k":"v"}<', '<other_config>{"k":"v","k":"w"}<', "twice"),
    ("</rows>", f"</rows><rows n=\"1\"><ref>{ref(1)}</ref></rows>", "twice"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), TAMPERING)
def test_damaged_snapshot_fails_its_checksum(snapshot_dir: Path, old: str, new: str, fragment: str) -> None:
    path = snapshot_dir / "state.xml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(StoreError, match="checksum") as info:
        Store(snapshot_dir, DESC).open()
    assert str(path) in str(info.value)


def test_one_changed_digit_is_damage(snapshot_dir: Path) -> None:
    path = snapshot_dir / "state.xml"
    path.write_text(path.read_text().replace("<VCPUs_max>2<", "<VCPUs_max>3<", 1))
    with pytest.raises(snapshot.SnapshotDamaged, match="does not match its checksum"):
        Store(snapshot_dir, DESC).open()


@pytest.mark.parametrize(("old", "new", "fragment"), TAMPERING)
def test_forged_snapshot_is_refused_when_verified(snapshot_dir: Path, old: str, new: str, fragment: str) -> None:
    """A file with a matching checksum but content the grammar refuses: loading with
    ``verify`` (the server's --verify-state, and fsck) validates it; the decoder still
    catches what the grammar cannot (twice the same ref or key, bad UTF-8)."""
    path = snapshot_dir / "state.xml"
    restamp(path, path.read_text().replace(old, new, 1))
    with pytest.raises(StoreError, match=fragment) as info:
        Store(snapshot_dir, DESC, verify=True).open()
    assert str(path) in str(info.value)


def test_format_1_snapshots_of_older_versions_load(tmp_path: Path) -> None:
    (tmp_path / "state.xml").write_text(textwrap.dedent(f"""\
        <?xml version="1.0" encoding="UTF-8"?>
        <xend-ext-state format="1" seq="4">
          <table class="VM">
            <VM ref="{ref(1)}">
              <uuid>uuid-1</uuid>
              <name_label enc="b64">AA==</name_label>
              <groups><item>g</item></groups>
              <other_config><entry key="k">v</entry></other_config>
            </VM>
          </table>
        </xend-ext-state>
        """))
    tables, seq = reopen(tmp_path)
    assert seq == 4
    assert tables["VM"] == {ref(1): {"uuid": "uuid-1", "name_label": "\x00", "groups": ["g"],
                                     "other_config": {"k": "v"}}}
    text = (tmp_path / "state.xml").read_text()
    (tmp_path / "state.xml").write_text(text.replace("<uuid>uuid-1</uuid>", "<uuid>uuid-1</uuid><bogus/>"))
    with pytest.raises(StoreError, match="schema"):
        reopen(tmp_path)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE xend-ext-state [<!ENTITY x "boom">]>',
        '<!DOCTYPE xend-ext-state [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
        '<!DOCTYPE xend-ext-state [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY x "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        '<!DOCTYPE xend-ext-state SYSTEM "http://example.invalid/state.dtd">',
    ],
)
def test_snapshot_with_dtd_or_entities_is_refused(snapshot_dir: Path, doctype: str) -> None:
    path = snapshot_dir / "state.xml"
    text = path.read_text()
    head, body = text.split("\n", 1)
    if "ENTITY x" in doctype:
        body = body.replace("<name_label>vm 1<", "<name_label>&x;<")
    restamp(path, f"{head}\n{doctype}\n{body}")
    with pytest.raises(StoreError, match="state.xml") as info:
        Store(snapshot_dir, DESC).open()
    assert "boom" not in str(info.value)


def test_missing_fields_and_new_classes_load(snapshot_dir: Path) -> None:
    path = snapshot_dir / "state.xml"
    restamp(path, path.read_text().replace("<weight>1.5</weight>", ""))
    grown = {**DESC, "VM": [*DESC["VM"], ("added_later", "int", ())], "new_class": [("uuid", "string", ())]}
    tables, _ = reopen(snapshot_dir, grown)
    assert "weight" not in tables["VM"][ref(1)]
    assert "added_later" not in tables["VM"][ref(1)]
    assert tables["new_class"] == {}


def test_snapshot_with_a_removed_field_is_refused(snapshot_dir: Path) -> None:
    smaller = {**DESC, "VM": [f for f in DESC["VM"] if f[0] != "weight"]}
    with pytest.raises(StoreError, match="state.xml"):
        Store(snapshot_dir, smaller).open()


# ---------------------------------------------------------------------- property test

KEYS = st.sampled_from(["a", "b", "", "é", "\x00", "k\n"])
TEXT = st.text(
    st.one_of(st.characters(codec=None, exclude_categories=()), st.integers(0xD800, 0xDFFF).map(chr),
              st.sampled_from(NASTY)),
    max_size=6,
)

# Object references the model could invent: any printable text (a snapshot must hold it).
REF_TEXT = st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=8)


def value_for(kind: str, values: tuple[str, ...]) -> st.SearchStrategy:
    return {
        "int": st.integers(-(2**70), 2**70).map(str),
        "bool": st.sampled_from(["true", "false"]),
        "enum": st.sampled_from(values or ("x",)),
        "set": st.lists(st.one_of(KEYS, TEXT), max_size=4, unique=True),
        "map": st.dictionaries(st.one_of(KEYS, TEXT), TEXT, max_size=4),
    }.get(kind, TEXT)


FIELDS = {cls: {f: (k, v) for f, k, v in fields} for cls, fields in DESC.items()}


def draw_op(data: st.DataObject, tables: dict) -> tuple:
    """A valid op for the current state, biased towards field updates of live objects."""
    what = data.draw(st.sampled_from(["create", "destroy", "set", "map", "map", "set_member", "set_member"]))
    kind_wanted = {"map": "map", "set_member": "set"}.get(what)
    live = sorted(
        c for c in DESC if tables[c] and (kind_wanted is None or any(k == kind_wanted for _, k, _ in DESC[c]))
    )
    if what == "create" or not live:
        cls = data.draw(st.sampled_from(sorted(DESC)))
        new_ref = data.draw(st.one_of(st.sampled_from([ref(i) for i in range(6)]), REF_TEXT))
        if new_ref in tables[cls]:
            return ("destroy", cls, new_ref)
        names = data.draw(st.lists(st.sampled_from(sorted(FIELDS[cls])), unique=True))
        return ("create", cls, new_ref, {f: data.draw(value_for(*FIELDS[cls][f])) for f in names})
    cls = data.draw(st.sampled_from(live))
    existing = sorted(tables[cls])
    if what == "destroy":
        return ("destroy", cls, data.draw(st.sampled_from([*existing, "OpaqueRef:gone"])))
    obj_ref = data.draw(st.sampled_from(existing))
    names = sorted(f for f, (k, _) in FIELDS[cls].items() if kind_wanted in (None, k))
    fname = data.draw(st.sampled_from(names))
    kind, values = FIELDS[cls][fname]
    current = tables[cls][obj_ref].get(fname)
    if what == "map" and current is not None:
        key = data.draw(st.one_of(KEYS, st.sampled_from(sorted(current) or ["a"])))
        if data.draw(st.booleans()):
            return ("map_add", cls, obj_ref, fname, key, data.draw(TEXT))
        return ("map_remove", cls, obj_ref, fname, key)
    if what == "set_member" and current is not None:
        item = data.draw(st.one_of(KEYS, st.sampled_from(current or ["a"])))
        return (data.draw(st.sampled_from(["set_add", "set_remove"])), cls, obj_ref, fname, item)
    return ("set", cls, obj_ref, fname, data.draw(value_for(kind, values)))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_property_random_ops_survive_reopen_and_compaction(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("prop")
    compact_min = data.draw(st.sampled_from([200, 2000, 1 << 20]))
    # Without a capture there are no snapshots: every reopen replays the whole journal.
    capture = data.draw(st.booleans())
    actions = ["op"] * 8 + ["durable", "reopen", "crash", "crash"] + (["compact"] if capture else [])

    stores: list[Store] = []  # every store this example opened; the last is current

    def fresh() -> tuple[Store, Model]:
        store, model = open_store(path, capture=capture, compact_min_bytes=compact_min)
        stores.append(store)
        return store, model

    async def main() -> Model:
        try:
            return await run(*fresh())
        finally:
            # Hypothesis ends an example early by raising from a draw (StopTest).  Without
            # this, the writer thread could go on creating journal files after the directory
            # was removed and made again, under the same name, for the next example.
            stores[-1]._crash()

    async def run(store: Store, model: Model) -> Model:
        history = {model.seq: copy.deepcopy(model.tables)}
        for _ in range(data.draw(st.integers(1, 25))):
            action = data.draw(st.sampled_from(actions))
            if action == "op":
                model.do(draw_op(data, model.tables))
                history[model.seq] = copy.deepcopy(model.tables)
            elif action == "durable":
                await store.durable(model.seq)
            elif action == "compact":
                await store.compact()
            else:
                durable_before = store.stats()["durable_seq"]
                if action == "reopen":
                    await store.close()
                else:  # crash with whatever is still buffered: it may or may not survive
                    store._crash()
                store, model = fresh()
                if action == "reopen":
                    assert model.seq == max(history)
                assert durable_before <= model.seq <= max(history)
                assert model.tables == history[model.seq]
                history = {s: t for s, t in history.items() if s <= model.seq}
        await store.close()
        return model

    try:
        model = asyncio.run(main())
        assert reopen(path) == (model.tables, model.seq)
    finally:
        shutil.rmtree(path)
