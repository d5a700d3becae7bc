"""Damaged state files, on real files with the real commands: the start is refused in one line
that names the file, the record and what to do; ``xend-ext fsck --repair`` keeps everything
before the damage, says what it dropped and keeps a copy of the damaged file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, ok

from xend_ext.store import journal


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xend_ext", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def serve(state: Path) -> subprocess.CompletedProcess:
    return run("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--unix", "none")


def one_line_refusal(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("xend-ext: cannot start: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def add_keys(server, names: list[str]) -> str:
    proxy, s = server.login()
    host = ok(proxy.host.get_all(s))[0]
    for name in names:
        ok(proxy.host.add_to_other_config(s, host, name, "v"))
    return host


def stored_keys(server, host: str) -> set[str]:
    proxy, s = server.login()
    return set(ok(proxy.host.get_other_config(s, host)))


def test_damaged_snapshot_refuses_the_start_and_fsck_repairs_it(make_server):
    server = make_server(unix=False)
    host = add_keys(server, ["a", "b", "c"])
    assert server.stop(signal.SIGTERM) == 0  # writes the final snapshot
    state = server.state_dir
    snap = state / "state.xml"
    data = snap.read_text()
    assert '"b":"v"' in data
    snap.write_text(data.replace('"b":"v"', '"b":"w"', 1))  # one changed character

    one_line_refusal(serve(state), f"snapshot {snap}", "checksum", "xend-ext fsck", "--repair")
    check = run("fsck", "--state-dir", str(state))
    assert check.returncode == 1 and "damaged" in check.stdout and "--repair" in check.stdout
    assert snap.read_text() == data.replace('"b":"v"', '"b":"w"', 1)  # a check changes nothing

    repair = run("fsck", "--state-dir", str(state), "--repair")
    assert repair.returncode == 0, repair
    assert "could not be located" in repair.stdout  # every object still reads: all kept, said so
    [copy] = state.glob("damaged-*/state.xml")
    assert copy.read_text() == data.replace('"b":"v"', '"b":"w"', 1)
    assert run("fsck", "--state-dir", str(state)).returncode == 0
    server = make_server(state_dir=state, unix=False)
    assert stored_keys(server, host) >= {"a", "b", "c"}


def test_unreadable_snapshot_keeps_the_objects_before_the_damage(make_server):
    server = make_server(unix=False)
    add_keys(server, ["a"])
    assert server.stop(signal.SIGTERM) == 0
    snap = server.state_dir / "state.xml"
    text = snap.read_text()
    cut = text.index("<table", text.index("<table") + 1)  # damage from the second table on
    snap.write_text(text[:cut] + "<garbage \x01" + text[cut + 40:])
    one_line_refusal(serve(server.state_dir), str(snap))
    repair = run("fsck", "--state-dir", str(server.state_dir), "--repair")
    assert repair.returncode == 0, repair
    assert "kept the" in repair.stdout and "dropped" in repair.stdout
    assert run("fsck", "--state-dir", str(server.state_dir)).returncode == 0


def damage_line(path: Path, lineno: int) -> None:
    lines = path.read_bytes().split(b"\n")
    line = bytearray(lines[lineno - 1])
    line[len(line) // 2] ^= 0x04
    lines[lineno - 1] = bytes(line)
    path.write_bytes(b"\n".join(lines))


def test_damaged_journal_record_refuses_the_start_and_fsck_cuts_there(make_server):
    server = make_server(unix=False)
    host = add_keys(server, [f"k{i}" for i in range(20)])
    server.kill9()  # no snapshot: the journal holds everything
    state = server.state_dir
    [jf] = journal.list_files(state)
    records = jf.path.read_bytes().splitlines()
    seqs = [journal.parse_record(line + b"\n")[0] for line in records]
    target = len(records) - 4  # the line adding k15
    assert b"k15" in records[target - 1]
    damage_line(jf.path, target)

    refusal = one_line_refusal(serve(state), f"journal {jf.path} line {target} (record {seqs[target - 1]})",
                               "checksum mismatch", "xend-ext fsck")
    assert "--repair" in refusal
    repair = run("fsck", "--state-dir", str(state), "--repair")
    assert repair.returncode == 0, repair
    assert f"dropped 5 line(s) from line {target}" in repair.stdout
    assert list(state.glob(f"damaged-*/{jf.path.name}"))
    server = make_server(state_dir=state, unix=False)
    keys = stored_keys(server, host)
    assert {f"k{i}" for i in range(15)} <= keys and not {f"k{i}" for i in range(15, 20)} & keys


def test_a_complete_last_record_with_a_bad_checksum_is_not_dropped_silently(make_server):
    server = make_server(unix=False)
    add_keys(server, ["x", "y"])
    server.kill9()
    [jf] = journal.list_files(server.state_dir)
    last = len(jf.path.read_bytes().splitlines())
    damage_line(jf.path, last)
    before = jf.path.read_bytes()
    one_line_refusal(serve(server.state_dir), f"line {last}", "checksum mismatch")
    assert jf.path.read_bytes() == before


def test_every_refusal_to_start_is_one_line(make_server, tmp_path):
    first = make_server(unix=False)
    one_line_refusal(serve(first.state_dir), "in use by another xend-ext server")
    bad_flag = run("serve", "--no-such-flag")
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.splitlines()) == 1
    assert "unrecognized arguments: --no-such-flag" in bad_flag.stderr
    (tmp_path / "file").write_text("")
    one_line_refusal(serve(tmp_path / "file" / "state"))
    nothing = run("fsck", "--state-dir", str(tmp_path / "empty"))
    assert nothing.returncode == 2 and len(nothing.stderr.splitlines()) == 1
