"""``xm grp-*`` and group config files, as a user runs them: a real ``xm`` process against real servers.

One 4 GiB server serves the module (so a member asking for more memory than is free fails), with a
second one as the destination of ``grp-migrate``; after each test every domain but Domain-0 and
every group but the default ones are removed over XML-RPC. The save/restore-across-a-restart test
has a server of its own. Outputs, exit codes and the servers' state after each command are checked.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess
from vmkit import BOOT_FIELDS, BOTH, lacks, off_xl
from xmkit import error, ok, xm

from xend_ext import sxp
from xend_ext.cli import group_config
from xend_ext.cli.domain_config import ConfigError
from xend_ext.cli.groups import member_failure

pytestmark = pytest.mark.backends(*BOTH)

EXAMPLE = ROOT / "examples" / "groups"
LIST_HEADER = "Name                  ID  Members"
MIB = 1 << 20


@pytest.fixture(scope="module")
def servers(tmp_path_factory, backend):
    base = tmp_path_factory.mktemp("xm-groups")
    srv = ServerProcess(base / "srv", "--memory", "4096", unix=False, host=backend).start()
    # the destination of migrations, which only the sim can do: one Xen machine is one host
    dst = ServerProcess(base / "dst", unix=False, host=backend).start() if backend.name != "xl" else None
    yield srv, dst
    srv.stop()
    if dst is not None:
        dst.stop()


def value(reply: dict):
    assert reply["Status"] == "Success", reply
    return reply["Value"]


def reset(server: ServerProcess) -> None:
    """Back to the boot state: Domain-0 alone, in Group-0; no group but the default ones."""
    proxy, session = server.login()
    for ref, rec in value(proxy.VM.get_all_records(session)).items():
        if rec["is_control_domain"]:
            continue
        if rec["power_state"] != "Halted":
            value(proxy.VM.hard_shutdown(session, ref))
        value(proxy.VM.destroy(session, ref))
    for ref, rec in value(proxy.VM_group.get_all_records(session)).items():
        if rec["name_label"] not in ("Group-0", "Null-Group"):
            value(proxy.VM_group.destroy(session, ref))
    value(proxy.session.logout(session))


@pytest.fixture
def srv(servers):
    yield servers[0]
    reset(servers[0])


@pytest.fixture
def dst(servers):
    yield servers[1]
    reset(servers[1])




def lines(stdout: str) -> list[str]:
    return stdout.rstrip("\n").split("\n")


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def vms(server) -> dict[str, dict]:
    """{name: VM record} of every domain."""
    proxy, session = server.login()
    records = value(proxy.VM.get_all_records(session))
    return {rec["name_label"]: rec for rec in records.values()}


def group(server, name: str) -> dict | None:
    """The group's record, with ``members``: {name: VM record}; None if there is none."""
    proxy, session = server.login()
    refs = value(proxy.VM_group.get_by_name_label(session, name))
    if not refs:
        return None
    record = value(proxy.VM_group.get_record(session, refs[0]))
    record["members"] = {rec["name_label"]: rec for rec in (value(proxy.VM.get_record(session, vm))
                                                              for vm in record["VMs"])}
    return record


def domain_cfg(folder: Path, name: str, order: int, memory: int = 64, **extra) -> str:
    body = f'name = "{name}"\nmemory = {memory}\norder = {order}\n'
    if BOOT_FIELDS.get("PV_kernel"):  # what the hypervisor of the test needs to boot it (xl: a PV kernel)
        body += f'kernel = "{BOOT_FIELDS["PV_kernel"]}"\n'
    body += "".join(f"{k} = {v!r}\n" for k, v in extra.items())
    return write(folder, f"{name}.cfg", body)


def shop(folder: Path, name: str = "shop", members=("db.cfg", "web.cfg"), **extra) -> str:
    """A group config with two domain configs beside it: db (order 0) and web (order 1)."""
    domain_cfg(folder, "db", 0)
    domain_cfg(folder, "web", 1, memory=96, vcpus=2)
    body = f'name = "{name}"\nmembers = {list(members)!r}\n' + "".join(f"{k} = {v!r}\n" for k, v in extra.items())
    return write(folder, f"{name}.grp", body)


def member_lines(stdout: str) -> list[list[str]]:
    """The member rows of an operation's report: [name, order, outcome...]."""
    return [row.split(None, 3)[:1] + row.split(None, 3)[2:] for row in lines(stdout) if row.startswith("  ")]


# -- group config files ------------------------------------------------------------------------

def test_config_names_members_by_name_and_by_config_file(tmp_path):
    cfg = shop(tmp_path, members=["db.cfg", "cache", str(tmp_path / "web.cfg")], description="the shop",
               placement="anti_affinity")
    config = group_config.read(cfg, [])
    assert (config.name, config.description, config.placement) == ("shop", "the shop", "anti_affinity")
    assert [(m.name, m.config) for m in config.members] == [
        ("db", tmp_path / "db.cfg"), ("cache", None), ("web", tmp_path / "web.cfg")]
    db = config.members[0].record
    assert db["name_label"] == "db" and db["order"] == "0" and db["memory_target"] == str(64 * MIB)
    assert config.members[2].record["VCPUs_at_startup"] == "2"
    assert config.record() == {"name_label": "shop", "name_description": "the shop", "placement": "anti_affinity"}


def test_config_overrides_and_defaults(tmp_path):
    cfg = write(tmp_path, "team.grp", 'members = ["a", "b"]\n')
    config = group_config.read(cfg, [])
    assert config.name == "team" and config.placement == "normal"  # the file's name without extension
    config = group_config.read(cfg, ["name=other", "members=x, y,z", "placement=anti_affinity"])
    assert config.name == "other" and [m.name for m in config.members] == ["x", "y", "z"]
    assert config.placement == "anti_affinity"
    config = group_config.read(cfg, ['members=["only"]'])
    assert [m.name for m in config.members] == ["only"]


@pytest.mark.parametrize(("text", "message"), [
    ('name = "g"\nmemebrs = ["a"]\n', "line 2: unknown variable 'memebrs'; did you mean 'members'?"),
    ('name = "g"\ncolour = "red"\n', "unknown variable 'colour'; a group config sets name, members, description, "
                                     "placement"),
    ('name = "g"\nplacement = "spread"\n', "placement must be one of normal, anti_affinity, not 'spread'"),
    ('name = "g"\nmembers = 3\n', "members must be a list of domain names and domain config files, not 3"),
    ('name = "g"\nmembers = ["a", 4]\n', "each member is a domain name or a domain config file (a string), not 4"),
    ('name = "g"\nmembers = ["a", "a"]\n', "domain 'a' is listed twice"),
    ('name = "g"\nmembers = ["nowhere.cfg"]\n', "member config file 'nowhere.cfg' not found"),
    ('name = ""\n', "name must not be empty"),
    ('name = __import__("os").getcwd()\n', "the value of 'name' must be a literal"),
    ('import os\n', "only 'variable = value' lines are allowed"),
])
def test_config_errors_name_the_problem(tmp_path, text, message):
    cfg = write(tmp_path, "bad.grp", text)
    with pytest.raises(ConfigError) as caught:
        group_config.read(cfg, [], domain_path=str(tmp_path / "none"))
    assert message in str(caught.value)
    assert cfg in str(caught.value)


def test_a_member_config_error_names_its_file(tmp_path):
    write(tmp_path, "db.cfg", 'name = "db"\nmemroy = 5\n')
    cfg = write(tmp_path, "g.grp", 'members = ["db.cfg"]\n')
    with pytest.raises(ConfigError) as caught:
        group_config.read(cfg, [])
    assert str(caught.value) == f"{tmp_path / 'db.cfg'}, line 2: unknown variable 'memroy'; did you mean 'memory'?"


def test_member_failures_are_read_back():
    failure = member_failure("HOST_NOT_ENOUGH_FREE_MEMORY 3000 2000")
    assert (failure.code, failure.params) == ("HOST_NOT_ENOUGH_FREE_MEMORY", ["3000", "2000"])
    failure = member_failure("OPERATION_NOT_ALLOWED web depends on db, which is not running")
    assert failure.params == ["web depends on db, which is not running"]
    failure = member_failure("VM_MIGRATE_FAILED OpaqueRef:x host http://h:1/ cannot talk to the destination")
    assert failure.params == ["OpaqueRef:x", "host", "http://h:1/", "cannot talk to the destination"]


def test_dry_run_needs_no_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = shop(tmp_path)
    result = subprocess.run([sys.executable, "-m", "xend_ext.cli.main", "--url", f"http://127.0.0.1:{port}/",
                             "grp-create", "-n", cfg, "name=dry"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["group"] == {"name_label": "dry", "name_description": "", "placement": "normal"}
    assert [m["name"] for m in shown["members"]] == ["db", "web"]
    assert shown["members"][1]["record"]["order"] == "1"


# -- grp-create / grp-new / grp-list -----------------------------------------------------------

def test_grp_create_defines_the_members_and_starts_them_in_order(srv, tmp_path):
    cfg = shop(tmp_path, description="a shop")
    result = xm(srv, "grp-create", cfg)
    out = ok(result)
    created = group(srv, "shop")
    assert lines(out)[0] == f"Group 'shop' created (id {created['group_id']}) with db, web."
    assert lines(out)[1] == "Group 'shop' started:"
    db, web = created["members"]["db"], created["members"]["web"]
    assert member_lines(out) == [["db", "0", f"started (id {db['domid']})"],
                                 ["web", "1", f"started (id {web['domid']})"]]
    assert f'Using config file "{cfg}".' in result.stderr
    assert created["name_description"] == "a shop" and created["placement"] == "normal"
    assert db["power_state"] == web["power_state"] == "Running"
    assert int(db["domid"]) < int(web["domid"])  # db (order 0) started first
    assert web["memory_target"] == str(96 * MIB) and web["VCPUs_at_startup"] == "2" and web["order"] == "1"
    # the same config again: the name is taken, nothing changes
    assert error(xm(srv, "grp-create", cfg)) == (
        "Error: a group called 'shop' already exists; choose another name, or remove it with 'xm grp-delete shop'")
    # with overrides, and members that are already defined join as they are
    result = xm(srv, "grp-create", cfg, "name=shop2", "placement=anti_affinity", "-p")
    out = ok(result)
    assert "Domain 'db' is already defined; it joins as it is (db.cfg is not read again)." in result.stderr
    assert member_lines(out) == [["db", "0", "already running (left alone)"],
                                 ["web", "1", "already running (left alone)"]]
    assert group(srv, "shop2")["placement"] == "anti_affinity"
    assert group(srv, "shop")["members"] == {}  # db and web moved to shop2: one group each


def test_grp_create_with_a_missing_domain_leaves_nothing(srv, tmp_path):
    cfg = shop(tmp_path, members=["db.cfg", "ghost"])
    assert error(xm(srv, "grp-create", cfg)).endswith("Error: Domain 'ghost' does not exist.")
    assert group(srv, "shop") is None and "db" not in vms(srv)


def test_grp_create_partial_failure_rolls_back_and_leaves_nothing(srv, tmp_path):
    proxy, session = srv.login()
    free = int(value(proxy.host.get_memory_free(session, value(proxy.host.get_all(session))[0]))) // MIB
    domain_cfg(tmp_path, "small", 0)
    domain_cfg(tmp_path, "big", 1, memory=free + 256)
    domain_cfg(tmp_path, "late", 2)
    cfg = write(tmp_path, "pf.grp", 'name = "pf"\nmembers = ["small.cfg", "big.cfg", "late.cfg"]\n')
    result = xm(srv, "grp-create", cfg)
    err = error(result)
    assert lines(result.stdout)[1] == "Group 'pf' was not started:"
    rows = member_lines(result.stdout)
    assert rows[0] == ["small", "0", "started, then stopped again (rolled back)"]
    assert rows[1][:2] == ["big", "1"]
    assert rows[1][2].startswith(f"FAILED: the host has too little free memory: {free + 256} MiB needed, ")
    assert rows[2] == ["late", "2", "not started (an earlier member failed)"]
    assert "Group 'pf' was not created (what this command defined was removed again)." in err
    assert err.endswith("Error: starting group 'pf' failed for big (see above); the members already started were "
                        "stopped again.")
    assert group(srv, "pf") is None
    assert set(vms(srv)) == {"Domain-0"}


def test_grp_new_and_grp_list(srv, tmp_path):
    for name, order in (("b", 1), ("a", 2), ("c", 0)):
        ok(xm(srv, "new", domain_cfg(tmp_path, name, order)))
    out = ok(xm(srv, "grp-new", "team", "a", "b", "--description", "the team"))
    team = group(srv, "team")
    assert out == f"Group 'team' created (id {team['group_id']}) with a, b.\n"
    assert ok(xm(srv, "grp-new", "empty")) == (
        f"Group 'empty' created (id {group(srv, 'empty')['group_id']}); add domains with 'xm grp-join DOMAIN empty'.\n")
    ok(xm(srv, "start", "a"))
    proxy, session = srv.login()
    value(proxy.VM.set_depends_on(session, vms(srv)["a"]["uuid"], [vms(srv)["b"]["uuid"]]))
    assert lines(ok(xm(srv, "grp-list"))) == [
        LIST_HEADER,
        "Group-0                0  Domain-0(running)",
        "Null-Group             1  c(halted)",
        f"team                 {team['group_id']:>3}  b(halted) a(running)",
        f"empty                {group(srv, 'empty')['group_id']:>3}  -",
    ]
    assert lines(ok(xm(srv, "grp-list", "team"))) == [LIST_HEADER, f"team                 {team['group_id']:>3}  "
                                                                    "b(halted) a(running)"]
    node = sxp.loads(ok(xm(srv, "grp-list", "-l", "team")))
    assert sxp.name(node) == "group"
    assert sxp.child_value(node, "name") == "team" and sxp.child_value(node, "description") == "the team"
    assert sxp.child_value(node, "group_id") == team["group_id"] and sxp.child_value(node, "placement") == "normal"
    members = next(child for child in node[1:] if child[0] == "members")[1:]
    rows = [{item[0]: item[1:] for item in member[1:]} for member in members]
    assert [(r["name"], r["order"], r["depends_on"], r["state"]) for r in rows] == [
        (["b"], ["1"], [], ["halted"]), (["a"], ["2"], ["b"], ["running"])]
    listed = json.loads(ok(xm(srv, "grp-list", "--json", "team", "empty")))
    assert [g["name_label"] for g in listed] == ["team", "empty"]
    assert [(m["name_label"], m["order"], m["depends_on"], m["power_state"]) for m in listed[0]["members"]] == [
        ("b", 1, [], "Halted"), ("a", 2, ["b"], "Running")]
    assert listed[1]["members"] == []
    # a group by uuid or by group ID
    assert lines(ok(xm(srv, "grp-list", team["uuid"])))[1].startswith("team ")
    assert lines(ok(xm(srv, "grp-list", team["group_id"])))[1].startswith("team ")
    assert error(xm(srv, "grp-list", "nope")) == "Error: Group 'nope' does not exist; 'xm grp-list' lists the groups."
    assert error(xm(srv, "grp-new", "team")).startswith("Error: a group called 'team' already exists")
    assert error(xm(srv, "grp-new", "x", "ghost")) == "Error: Domain 'ghost' does not exist."


# -- the operations ------------------------------------------------------------------------------

def test_every_operation_reports_each_member_in_its_order(srv, tmp_path):
    ok(xm(srv, "grp-create", shop(tmp_path), "-p"))

    def ids():
        members = group(srv, "shop")["members"]
        return members["db"]["domid"], members["web"]["domid"]

    def states():
        members = group(srv, "shop")["members"]
        return members["db"]["power_state"], members["web"]["power_state"]

    assert states() == ("Paused", "Paused")
    db, web = ids()
    steps = [
        (["grp-unpause"], "unpaused", "up", ("Running", "Running"), " (id {})"),
        (["grp-pause"], "paused", "down", ("Paused", "Paused"), " (id {})"),
        (["grp-unpause"], "unpaused", "up", ("Running", "Running"), " (id {})"),
        (["grp-suspend"], "suspended", "down", ("Suspended", "Suspended"), ""),
        (["grp-resume", "-p"], "resumed", "up", ("Paused", "Paused"), " (paused, id {})"),
        (["grp-unpause"], "unpaused", "up", ("Running", "Running"), " (id {})"),
        (["grp-reboot"], "rebooted", "up", ("Running", "Running"), " (id {})"),
        (["grp-reboot", "--hard"], "reset", "up", ("Running", "Running"), " (id {})"),
        (["grp-shutdown"], "shut down", "down", ("Halted", "Halted"), ""),
        (["grp-start"], "started", "up", ("Running", "Running"), " (id {})"),
        (["grp-destroy"], "destroyed", "down", ("Halted", "Halted"), ""),
    ]
    for command, done, direction, expected, note in steps:
        out = ok(xm(srv, *command, "shop"))
        assert states() == expected, command
        db, web = ids()
        rows = [["db", "0", done + note.format(db)], ["web", "1", done + note.format(web)]]
        assert lines(out)[0] == f"Group 'shop' {done}:", command
        assert member_lines(out) == (rows if direction == "up" else rows[::-1]), command
    assert ok(xm(srv, "grp-destroy", "shop")).endswith("db                   order 0   already halted (left alone)\n")


def test_progress_is_shown_on_a_terminal(srv, tmp_path):
    ok(xm(srv, "grp-create", shop(tmp_path)))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env["XM_CONF"] = "/nonexistent/xm.conf"
    proc = subprocess.Popen([sys.executable, "-m", "xend_ext.cli.main", "--url", srv.url, "grp-shutdown", "shop"],
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(30) == 0
    proc.stdout.close()
    assert b"shutting down shop [" in shown and b"100%" in shown


def test_a_partial_failure_names_the_member_and_why(srv, tmp_path):
    ok(xm(srv, "grp-create", shop(tmp_path)))
    ok(xm(srv, "destroy", "db"))
    result = xm(srv, "grp-pause", "shop")
    err = error(result)
    assert lines(result.stdout)[0] == "Group 'shop' was not paused:"
    assert member_lines(result.stdout) == [
        ["web", "1", "paused, then unpaused again (rolled back)"],
        ["db", "0", "FAILED: Domain 'db' is halted; it must be running for that. Start it first with 'xm start db'."]]
    assert err == ("Error: pausing group 'shop' failed for db (see above); the members already paused were unpaused "
                   "again.")
    assert group(srv, "shop")["members"]["web"]["power_state"] == "Running"


def test_a_dependency_that_is_not_running(srv, tmp_path):
    ok(xm(srv, "new", domain_cfg(tmp_path, "outside", 0)))
    ok(xm(srv, "grp-create", shop(tmp_path)))
    ok(xm(srv, "grp-destroy", "shop"))
    proxy, session = srv.login()
    everyone = vms(srv)
    value(proxy.VM.set_depends_on(session, everyone["web"]["uuid"], [everyone["outside"]["uuid"]]))
    result = xm(srv, "grp-start", "shop")
    error(result)
    assert member_lines(result.stdout)[1] == [
        "web", "1", "FAILED: domain 'web' depends on 'outside', which is not running; start it first with "
                    "'xm start outside'"]


# -- membership -------------------------------------------------------------------------------

def test_grp_join_and_grp_delete(srv, tmp_path):
    ok(xm(srv, "grp-create", shop(tmp_path)))
    ok(xm(srv, "new", domain_cfg(tmp_path, "cache", 5)))
    assert ok(xm(srv, "grp-join", "cache", "shop")) == "Domain 'cache' joined group 'shop' (it left 'Null-Group').\n"
    assert sorted(group(srv, "shop")["members"]) == ["cache", "db", "web"]
    ok(xm(srv, "grp-new", "other"))
    assert ok(xm(srv, "grp-join", "web", "other")) == "Domain 'web' joined group 'other' (it left 'shop').\n"
    assert ok(xm(srv, "grp-join", "web", "other")) == "Domain 'web' is in group 'other'.\n"
    assert sorted(group(srv, "shop")["members"]) == ["cache", "db"]
    assert error(xm(srv, "grp-join", "Domain-0", "shop")) == (
        "Error: Domain-0 always stays in Group-0; it cannot be put in another group")
    assert error(xm(srv, "grp-join", "db", "Group-0")) == (
        "Error: Group-0 holds Domain-0 (the control domain) only; put the domain in another group ('xm grp-list' "
        "lists them, 'xm grp-new NAME DOMAIN' makes one)")
    assert error(xm(srv, "grp-join", "ghost", "shop")) == "Error: Domain 'ghost' does not exist."
    out = ok(xm(srv, "grp-delete", "shop"))
    assert out in ("Group 'shop' deleted; cache, db are in Null-Group now.\n",
                   "Group 'shop' deleted; db, cache are in Null-Group now.\n")
    assert group(srv, "shop") is None
    assert sorted(group(srv, "Null-Group")["members"]) == ["cache", "db"]
    assert vms(srv)["db"]["power_state"] == "Running"  # deleting a group stops nothing
    assert ok(xm(srv, "grp-delete", "other")) == "Group 'other' deleted; web are in Null-Group now.\n"
    for default in ("Group-0", "Null-Group"):
        assert error(xm(srv, "grp-delete", default)) == (
            f"Error: {default} cannot be destroyed: it is one of the two default groups")


# -- save, restore, migrate ------------------------------------------------------------------------

@off_xl("it runs a second server beside the module's, which on the one Xen machine sees its domains")
def test_grp_save_and_grp_restore_across_a_server_restart(make_server, backend, tmp_path):
    server = make_server("--memory", "4096", unix=False)
    ok(xm(server, "grp-create", shop(tmp_path)))
    ok(xm(server, "pause", "web"))
    before = group(server, "shop")
    work = tmp_path / "work"
    work.mkdir()
    relative = str(tmp_path.relative_to(server.image_root) / "saved")  # from the server's image directory
    out = ok(xm(server, "grp-save", "shop", relative, cwd=work))  # made there if missing
    saved = tmp_path / "saved"
    assert lines(out) == [f"Group 'shop' saved to {relative} in the server's image directory:",
                          "  web                  order 1   saved",
                          "  db                   order 0   saved"]
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["group.sxp", *(f"{rec['uuid']}.img" for rec in before["members"].values())])
    assert {rec["power_state"] for rec in group(server, "shop")["members"].values()} == {"Halted"}
    assert error(xm(server, "grp-save", "shop", "/etc/shop")) == (
        f"Error: the directory '/etc/shop' cannot be used on the server host: outside the image directory "
        f"{server.image_root.resolve()}; give a path inside it (a relative path is taken from it)")

    assert server.stop() == 0
    server = make_server("--memory", "4096", state_dir=server.state_dir, unix=False)
    assert lines(ok(xm(server, "grp-list", "shop")))[1] == (
        f"shop                 {before['group_id']:>3}  db(halted) web(halted)")
    out = ok(xm(server, "grp-restore", relative, cwd=work))
    after = group(server, "shop")
    db, web = after["members"]["db"], after["members"]["web"]
    assert lines(out) == [f"Group 'shop' restored from {relative}:",
                          f"  db                   order 0   restored (id {db['domid']})",
                          f"  web                  order 1   restored (paused, id {web['domid']})"]
    assert (db["power_state"], web["power_state"]) == ("Running", "Paused")
    assert after["uuid"] == before["uuid"] and sorted(after["VMs"]) == sorted(before["VMs"])
    assert error(xm(server, "grp-restore", str(tmp_path))) .startswith(
        f"Error: '{tmp_path}' on the server host holds no complete group saved by 'xm grp-save' (no readable "
        "group.sxp")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.backends(*BOTH)
@pytest.mark.parametrize("live", [False, True], ids=["not-live", "live"])
def test_grp_migrate_moves_the_group(srv, dst, tmp_path, live):
    ok(xm(srv, "grp-create", shop(tmp_path)))
    ok(xm(srv, "pause", "web"))
    uuids = {name: rec["uuid"] for name, rec in group(srv, "shop")["members"].items()}
    out = ok(xm(srv, "grp-migrate", "shop", dst.url, *(["--live"] if live else [])))
    assert lines(out) == [f"Group 'shop' migrated to {dst.url}:",
                          "  db                   order 0   migrated",
                          "  web                  order 1   migrated"]
    assert group(srv, "shop")["members"] == {}
    assert set(vms(srv)) == {"Domain-0"}
    there = group(dst, "shop")
    assert {name: (rec["uuid"], rec["power_state"]) for name, rec in there["members"].items()} == {
        "db": (uuids["db"], "Running"), "web": (uuids["web"], "Paused")}
    assert lines(ok(xm(dst, "grp-list", "shop")))[1].endswith("db(running) web(paused)")


def test_a_failed_grp_migrate_says_why_and_keeps_the_group(srv, tmp_path):
    ok(xm(srv, "grp-create", shop(tmp_path)))
    url = closed_port_url()
    result = xm(srv, "grp-migrate", "shop", url)
    err = error(result)
    rows = member_lines(result.stdout)
    why = ("FAILED: this server's backend cannot do that (migrate is missing)" if lacks(srv, "migrate")
           else f"FAILED: migrating 'db' to {url} failed: ")
    assert rows[0][:2] == ["db", "0"] and rows[0][2].startswith(why), rows
    assert rows[1] == ["web", "1", "not migrated (an earlier member failed)"]
    assert err == "Error: migrating group 'shop' failed for db (see above)."
    assert {rec["power_state"] for rec in group(srv, "shop")["members"].values()} == {"Running"}


# -- the example ------------------------------------------------------------------------------

def test_shop_example(srv):
    assert shutil.which("sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env.update(XM_CONF="/nonexistent/xm.conf", XM=f"{sys.executable} -m xend_ext.cli.main", PYTHON=sys.executable,
               KERNEL=BOOT_FIELDS.get("PV_kernel", ""), IMAGES=str(srv.image_root))
    result = subprocess.run(["sh", str(EXAMPLE / "shop.sh"), srv.url], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    created, rest = out.split("== xm grp-save", 1)
    saved, restored = rest.split("== xm grp-restore", 1)
    assert "Group 'shop' created (id " in created and "with shop-db, shop-web." in created
    orders = [line for line in out.splitlines() if line.startswith("started in this order: ")]
    assert len(orders) == 2
    for line in orders:  # shop-db (order 0) started before shop-web (order 1): a lower domain ID
        db_id = int(line.split("shop-db (order 0, id ")[1].split(")")[0])
        web_id = int(line.split("shop-web (order 1, id ")[1].split(")")[0])
        assert db_id < web_id, line
    assert "(name shop-db)" in created and "(order 1)" in created
    assert "  shop-web             order 1   saved\n  shop-db              order 0   saved\n" in saved
    assert "<uuid>.img\n<uuid>.img\ngroup.sxp\n" in saved
    assert "shop-db(halted) shop-web(halted)" in saved
    assert "restored (id " in restored and "shop-db(running) shop-web(running)" in restored
    # it cleans up after itself
    assert lines(ok(xm(srv, "grp-list"))) == [LIST_HEADER, "Group-0                0  Domain-0(running)",
                                              "Null-Group             1  -"]
    assert set(vms(srv)) == {"Domain-0"}
