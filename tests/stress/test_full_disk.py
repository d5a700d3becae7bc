"""A full disk: a change the journal cannot take is not made, and the server goes on by itself.

The state directory lives on a small tmpfs the test mounts (the tests run as root), filled with a file until
the kernel answers ENOSPC: the real failure, on the real server, driven by a real client.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import fails, ok

from xend_ext.store import journal

ADVICE = "free space"


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * (64 << 10)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def use_up_last_page(proxy, s: str, host: str, tag: str = "pad") -> None:
    """The journal's last page may still have room on a full disk: write until it has none, with
    ever smaller records (a refused write leaves no byte behind)."""
    i = 0
    for size in (2000, 500, 120, 1):
        for _ in range(50):
            i += 1
            reply = proxy.host.add_to_other_config(s, host, f"{tag}{i}", "p" * size)
            if reply["Status"] == "Failure":
                refused(reply)
                break
        else:
            raise AssertionError("the disk never refused a write")


def end_journal_on_a_page(proxy, s: str, host: str, state: Path, tag: str) -> None:
    """Before the disk fills: one record ends the journal exactly at a page of the tmpfs, so that
    any later record needs a new page and is refused, whatever its size (left to chance, a record
    smaller than the smallest pad still fitted in the last page's rest)."""
    page = os.statvfs(state).f_bsize
    path = journal.list_files(state)[-1].path
    before = path.stat().st_size
    ok(proxy.host.add_to_other_config(s, host, f"{tag}m", "p"))
    overhead = path.stat().st_size - before - 1  # the record's bytes but its value's
    for attempt in range(3):  # the seq may have grown a digit since it was measured
        need = -path.stat().st_size % page
        while need < overhead + 1:
            need += page
        ok(proxy.host.add_to_other_config(s, host, f"{tag}{attempt}", "p" * (need - overhead)))
        if path.stat().st_size % page == 0:
            return
    raise AssertionError(f"the journal does not end on a page: {path.stat().st_size} bytes")


def refused(reply: dict, advice_says: str = "not made") -> None:
    code, cause, advice = fails(reply)
    assert code == "STORE_WRITE_FAILED"
    assert cause == "No space left on device"
    assert ADVICE in advice and advice_says in advice


def new_vm(proxy, s: str, name: str) -> dict:
    return proxy.VM.create(s, {"name_label": name, "memory_static_max": str(64 << 20),
                               "memory_target": str(64 << 20), "VCPUs_max": "1", "VCPUs_at_startup": "1"})


def journal_records(state: Path) -> list[int]:
    """The seq of every record on disk, each checked (checksum, newline) by the store's parser."""
    seqs = []
    for jf in journal.list_files(state):
        for line in jf.path.read_bytes().splitlines(keepends=True):
            seqs.append(journal.parse_record(line)[0])
    return seqs


def test_full_disk_refuses_changes_serves_reads_and_recovers(make_server, small_disk):
    state = small_disk / "state"
    server = make_server(state_dir=state, unix=False)
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    vm = ok(new_vm(proxy, s, "before"))
    ok(new_vm(proxy, s, "gone"))
    ok(proxy.host.add_to_other_config(s, host, "k0", "v0"))
    end_journal_on_a_page(proxy, s, host, state, "end")
    filler = fill(small_disk)
    use_up_last_page(proxy, s, host)
    token = ok(proxy.event.__getattr__("from")(s, ["VM", "host"], "", 0.1))["token"]
    on_disk = journal_records(state)
    # Changes: each answered with the documented error, none of them made.
    refused(new_vm(proxy, s, "during"))
    refused(new_vm(proxy, s, "during"))  # a retry meets the same error, not the unique-name check
    refused(proxy.VM.set_name_label(s, vm, "renamed"))
    refused(proxy.VM.add_to_other_config(s, vm, "k", "v"))
    refused(proxy.host.add_to_other_config(s, host, "k1", "v1"))
    refused(proxy.host.remove_from_other_config(s, host, "k0"))
    # Reads: served, and none shows a refused change.
    assert ok(proxy.VM.get_by_name_label(s, "during")) == []
    assert ok(proxy.VM.get_name_label(s, vm)) == "before"
    assert ok(proxy.VM.get_other_config(s, vm)).get("k") is None
    assert ok(proxy.host.get_other_config(s, host)) == {**ok(proxy.host.get_other_config(s, host)), "k0": "v0"}
    assert "k1" not in ok(proxy.host.get_other_config(s, host))
    assert len(ok(proxy.VM.get_all_records(s))) == 3  # Domain-0, "before" and "gone"
    # No event for a change that was taken back.
    events = ok(proxy.event.__getattr__("from")(s, ["VM", "host"], token, 0.5))["events"]
    assert [e for e in events if e["class"].lower() in ("vm", "host")] == []
    # The journal holds exactly what it held: the refused records were truncated away.
    assert journal_records(state) == on_disk

    # kill -9, restart (with room: the simulated host writes its own file as it starts):
    # nothing refused is there.
    server.kill9()
    filler.unlink()
    server = make_server(state_dir=state, unix=False)
    proxy, s = server.login()
    assert ok(proxy.VM.get_by_name_label(s, "during")) == []
    assert ok(proxy.VM.get_name_label(s, vm)) == "before"
    other = ok(proxy.host.get_other_config(s, host))
    assert other["k0"] == "v0" and "k1" not in other

    # Full again, on the running server.
    end_journal_on_a_page(proxy, s, host, state, "again-end")
    filler = fill(small_disk)
    use_up_last_page(proxy, s, host, "again")
    refused(new_vm(proxy, s, "during"))
    # A destroy whose backend step (undefine) happened is kept, mirroring the hypervisor, and
    # said so: recorded once the disk has room.
    gone = ok(proxy.VM.get_by_name_label(s, "gone"))[0]
    refused(proxy.VM.destroy(s, gone), "hypervisor did it")
    assert ok(proxy.VM.get_by_name_label(s, "gone")) == []

    # Space comes back: the same server takes changes again, by itself.
    token = ok(proxy.event.__getattr__("from")(s, ["VM"], "", 0.1))["token"]
    filler.unlink()
    during = ok(new_vm(proxy, s, "during"))
    ok(proxy.VM.set_name_label(s, vm, "renamed"))
    ok(proxy.host.add_to_other_config(s, host, "k1", "v1"))
    events = ok(proxy.event.__getattr__("from")(s, ["VM"], token, 1.0))["events"]
    assert {e["ref"] for e in events if e["class"].lower() == "vm"} >= {during, vm}
    server.kill9()
    server = make_server(state_dir=state, unix=False)
    proxy, s = server.login()
    assert ok(proxy.VM.get_name_label(s, during)) == "during"
    assert ok(proxy.VM.get_name_label(s, vm)) == "renamed"
    assert ok(proxy.host.get_other_config(s, host))["k1"] == "v1"
    assert ok(proxy.VM.get_by_name_label(s, "gone")) == []
    seqs = journal_records(state)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate


def test_writes_refused_while_full_leave_a_loadable_state_under_load(make_server, small_disk):
    """Many writers while the disk fills and empties: every acknowledged change is there after a
    kill -9, no refused one is, and the server never stops answering."""
    state = small_disk / "state"
    server = make_server(state_dir=state, unix=False)
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    acked, refusals = [], 0
    filler = None
    for i in range(300):
        if i % 100 == 30:
            filler = fill(small_disk)
            use_up_last_page(proxy, s, host, f"pad{i}-")
        if i % 100 == 70 and filler is not None:
            filler.unlink()
            filler = None
        reply = proxy.host.add_to_other_config(s, host, f"k{i}", "x" * 200)
        if reply["Status"] == "Success":
            acked.append(f"k{i}")
        else:
            refused(reply)
            refusals += 1
    assert refusals >= 100 and len(acked) >= 100
    stored = ok(proxy.host.get_other_config(s, host))
    assert set(acked) <= set(stored) and not {f"k{i}" for i in range(300)} - set(acked) & set(stored)
    server.kill9()
    time.sleep(0.1)
    server = make_server(state_dir=state, unix=False)
    proxy, s = server.login()
    stored = ok(proxy.host.get_other_config(s, host))
    assert [k for k in stored if k.startswith("k") and k[1:].isdigit()] == acked
    assert ok(proxy.host.get_other_config(s, host)) == stored
