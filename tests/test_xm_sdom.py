"""``xm sdom-*`` as a user runs them: a real ``xm`` process against a real server.

One 4-pCPU server serves the module; the ``fresh`` fixture puts it back in its boot state after
each test (no scheduling domain, no domain but Domain-0, no pool but Pool-0). The domains a test
needs are defined through the official XenAPI client (faster than config files; ``xm create`` is
tested elsewhere); every sdom command runs as its own ``xm`` process. Outputs, exit codes and the
server's state after each command are what is checked; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import XenAPI
from conftest import ROOT, ServerProcess
from poolkit import add_user
from vmkit import new_vm, session
from xmkit import error, ok, xm

from xend_ext import sxp
from xend_ext.cli.client import Client
from xend_ext.cli.errors import Context
from xend_ext.cli.sdom import pool_mismatch, sdom_of

NULL = "OpaqueRef:NULL"
PIN0 = {"cpumap0": "0"}
HEADER = "Name                 Master               Weight   Cap  Members"
EXAMPLE = ROOT / "examples" / "sched-domain" / "ten_percent.sh"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("xm-sdom") / "state", "--cpus", "4", unix=False).start()
    yield server
    server.stop()


def reset(server) -> None:
    """Back to the boot state: no scheduling domain, no VM but Domain-0, Pool-0 alone."""
    x = session(server).xenapi
    for sd in x.sched_domain.get_all():
        x.sched_domain.destroy(sd)
    for ref, rec in x.VM.get_all_records().items():
        if rec["is_control_domain"]:
            continue
        if rec["power_state"] != "Halted":
            x.VM.hard_shutdown(ref)
        x.VM.destroy(ref)
    pool0 = x.cpu_pool.get_by_name_label("Pool-0")[0]
    for ref, rec in x.cpu_pool.get_all_records().items():
        if ref != pool0:
            if rec["activated"]:
                x.cpu_pool.deactivate(ref)
            x.cpu_pool.destroy(ref)
    for cpu in x.host_cpu.get_unassigned_cpus():
        x.cpu_pool.add_host_CPU_live(pool0, cpu)
    x.session.logout()


@pytest.fixture
def fresh(srv):
    yield srv
    reset(srv)


@pytest.fixture
def x(fresh):
    s = session(fresh)
    yield s.xenapi
    s.xenapi.session.logout()




def vm(x, name: str, running: bool = False, **fields) -> str:
    fields.setdefault("VCPUs_max", 1)
    ref = new_vm(x, name, **fields)
    if running:
        x.VM.start(ref, False, False)
    return ref


def lines(stdout: str) -> list[str]:
    return stdout.rstrip("\n").split("\n")


def row(name: str, master: str, weight: int, cap: int, members: str) -> str:
    return "%-20s %-20s %6d %5d  %s" % (name, master, weight, cap, members)  # noqa: UP031 the format under test


# -- sdom-create ---------------------------------------------------------------------------------

def test_create_names_the_domain_after_its_master_or_name(fresh, x):
    web = vm(x, "web", VCPUs_params={"weight": "512", "cap": "10"})
    db = vm(x, "db")
    assert ok(xm(fresh, "sdom-create", "web")) == "Scheduling domain 'web' created with master 'web'.\n"
    (sd,) = x.sched_domain.get_all()
    assert x.sched_domain.get_master(sd) == web and x.VM.get_sched_domain(web) == sd
    assert ok(xm(fresh, "sdom-create", x.VM.get_uuid(db), "--name", "db-stubs")) == \
        "Scheduling domain 'db-stubs' created with master 'db'.\n"
    assert x.VM.get_sched_domain(db) == x.sched_domain.get_by_name_label("db-stubs")[0]
    assert lines(ok(xm(fresh, "sdom-list"))) == [HEADER, row("db-stubs", "db", 256, 0, "-"),
                                                  row("web", "web", 512, 10, "-")]


def test_create_errors(fresh, x):
    vm(x, "web")
    vm(x, "stub")
    ok(xm(fresh, "sdom-create", "web"))
    ok(xm(fresh, "sdom-add", "web", "stub"))
    before = x.sched_domain.get_all_records()
    assert error(xm(fresh, "sdom-create", "web", "--name", "again")) == (
        "Error: Domain 'web' is already the master of scheduling domain 'web'; a domain is in at most one. "
        "Dissolve that one first with 'xm sdom-destroy web'.")
    assert error(xm(fresh, "sdom-create", "stub")) == (
        "Error: Domain 'stub' is already a member of scheduling domain 'web'; a domain is in at most one. "
        "Take it out first with 'xm sdom-remove stub'.")
    assert error(xm(fresh, "sdom-create", "Domain-0")) == "Error: Domain-0 cannot be in a scheduling domain"
    assert error(xm(fresh, "sdom-create", "nope")) == "Error: Domain 'nope' does not exist."
    assert error(xm(fresh, "sdom-create", "stub", "--name", "")) == \
        "Error: a scheduling domain's name cannot be empty."
    assert "the following arguments are required: MASTER" in error(xm(fresh, "sdom-create"), 2)
    assert x.sched_domain.get_all_records() == before


# -- sdom-add --------------------------------------------------------------------------------------

def test_add_by_scheduling_domain_name_uuid_or_master(fresh, x):
    web = vm(x, "web", running=True)
    a, b, c, d = (vm(x, n) for n in ("a", "b", "c", "d"))
    ok(xm(fresh, "sdom-create", "web", "--name", "frontend"))
    (sd,) = x.sched_domain.get_all()
    assert ok(xm(fresh, "sdom-add", "frontend", "a")) == ""  # the scheduling domain's name
    ok(xm(fresh, "sdom-add", x.sched_domain.get_uuid(sd), "b"))  # its uuid
    ok(xm(fresh, "sdom-add", "web", x.VM.get_uuid(c)))  # its master's name; the domain by uuid
    ok(xm(fresh, "sdom-add", x.VM.get_domid(web), "d"))  # its master's domid
    assert x.sched_domain.get_members(sd) == [a, b, c, d]
    assert lines(ok(xm(fresh, "sdom-list"))) == [HEADER, row("frontend", "web", 256, 0, "a,b,c,d")]


def test_add_errors_are_sentences(fresh, x):
    for name in ("web", "stub", "db", "dbstub", "free"):
        vm(x, name)
    _pool = x.cpu_pool.create({"name_label": "batch"})
    vm(x, "elsewhere", pool_name="batch")
    ok(xm(fresh, "sdom-create", "web"))
    ok(xm(fresh, "sdom-add", "web", "stub"))
    ok(xm(fresh, "sdom-create", "db", "--name", "web2"))
    ok(xm(fresh, "sdom-add", "db", "dbstub"))
    before = x.sched_domain.get_all_records()
    cases = {
        ("nope", "free"): "Scheduling domain 'nope' does not exist ('xm sdom-list' lists them; the master "
                          "domain's name works too).",
        ("free", "stub"): "Domain 'free' is not the master of a scheduling domain; make it one with "
                          "'xm sdom-create free'.",
        ("stub", "free"): "Domain 'stub' is a member, not the master, of scheduling domain 'web'; name the "
                          "scheduling domain ('web') or its master ('web') instead.",
        ("web", "nope"): "Domain 'nope' does not exist.",
        ("web", "stub"): "Domain 'stub' is already a member of scheduling domain 'web'.",
        ("web", "web"): "Domain 'web' is already the master of scheduling domain 'web'.",
        ("web", "dbstub"): "Domain 'dbstub' is already a member of scheduling domain 'web2'; a domain is in at "
                           "most one. Take it out first with 'xm sdom-remove dbstub'.",
        ("web", "db"): "Domain 'db' is already the master of scheduling domain 'web2'; a domain is in at most "
                       "one. Dissolve that one first with 'xm sdom-destroy web2'.",
        ("web", "elsewhere"): "Domain 'elsewhere' is in pool 'batch', but a scheduling domain's domains all run in "
                              "its master's pool 'Pool-0'. Move it there first with "
                              "'xm cpupool-migrate elsewhere Pool-0'.",
        ("web", "Domain-0"): "Domain-0 cannot be in a scheduling domain",
    }
    for (sdom, domain), sentence in cases.items():
        assert error(xm(fresh, "sdom-add", sdom, domain)) == f"Error: {sentence}", (sdom, domain)
    assert x.sched_domain.get_all_records() == before
    assert "the following arguments are required: DOMAIN" in error(xm(fresh, "sdom-add", "web"), 2)


def test_add_refuses_a_name_that_means_two_scheduling_domains(fresh, x):
    """'db' is the name of one scheduling domain and the master of another: no guessing."""
    vm(x, "db")
    vm(x, "web")
    vm(x, "free")
    ok(xm(fresh, "sdom-create", "web", "--name", "db"))
    ok(xm(fresh, "sdom-create", "db", "--name", "other"))
    refs = {x.sched_domain.get_name_label(r): r.removeprefix("OpaqueRef:") for r in x.sched_domain.get_all()}
    listed = f"'db' ({refs['db']}), 'other' ({refs['other']})"
    assert error(xm(fresh, "sdom-add", "db", "free")) == (
        f"Error: 'db' names more than one scheduling domain: {listed}; name it by uuid instead ('xm sdom-list' "
        "lists them; the master domain's name works too).")
    ok(xm(fresh, "sdom-add", refs["other"], "free"))
    assert x.VM.get_sched_domain(x.VM.get_by_name_label("free")[0]) == "OpaqueRef:" + refs["other"]


# -- sdom-remove, sdom-destroy -----------------------------------------------------------------

def test_remove_takes_a_member_out_of_its_domain(fresh, x):
    vm(x, "web")
    stub = vm(x, "stub")
    vm(x, "free")
    ok(xm(fresh, "sdom-create", "web"))
    ok(xm(fresh, "sdom-add", "web", "stub"))
    assert ok(xm(fresh, "sdom-remove", "stub")) == ""
    assert x.VM.get_sched_domain(stub) == NULL
    assert lines(ok(xm(fresh, "sdom-list"))) == [HEADER, row("web", "web", 256, 0, "-")]
    assert error(xm(fresh, "sdom-remove", "stub")) == "Error: Domain 'stub' is not in a scheduling domain."
    assert error(xm(fresh, "sdom-remove", "free")) == "Error: Domain 'free' is not in a scheduling domain."
    assert error(xm(fresh, "sdom-remove", "web")) == (
        "Error: Domain 'web' is the master of scheduling domain 'web' and cannot leave it; dissolve it with "
        "'xm sdom-destroy web'.")
    assert error(xm(fresh, "sdom-remove", "nope")) == "Error: Domain 'nope' does not exist."
    assert "required: DOMAIN" in error(xm(fresh, "sdom-remove"), 2)


def test_destroy_by_name_uuid_or_master(fresh, x):
    web, stub, db = vm(x, "web"), vm(x, "stub"), vm(x, "db")
    ok(xm(fresh, "sdom-create", "web", "--name", "front"))
    ok(xm(fresh, "sdom-add", "front", "stub"))
    ok(xm(fresh, "sdom-create", "db"))
    assert ok(xm(fresh, "sdom-destroy", "web")) == ""  # by its master
    assert [x.VM.get_sched_domain(v) for v in (web, stub)] == [NULL, NULL]
    (sd,) = x.sched_domain.get_all()
    ok(xm(fresh, "sdom-destroy", x.sched_domain.get_uuid(sd)))
    assert x.VM.get_sched_domain(db) == NULL
    assert lines(ok(xm(fresh, "sdom-list"))) == [HEADER]
    assert error(xm(fresh, "sdom-destroy", "front")) == (
        "Error: Scheduling domain 'front' does not exist ('xm sdom-list' lists them; the master domain's name "
        "works too).")
    assert error(xm(fresh, "sdom-destroy", "web")) == (
        "Error: Domain 'web' is not the master of a scheduling domain; make it one with 'xm sdom-create web'.")
    assert "required: SDOM_OR_MASTER" in error(xm(fresh, "sdom-destroy"), 2)


# -- sdom-list ---------------------------------------------------------------------------------------

def test_list_shows_the_masters_weight_and_cap_in_force(fresh, x):
    web = vm(x, "web", running=True, VCPUs_params={"weight": "512", "cap": "20"})
    vm(x, "halted", VCPUs_params={"weight": "128", "cap": "30"})
    for name in ("zeta", "alpha"):
        vm(x, name)
    ok(xm(fresh, "sdom-create", "web"))
    ok(xm(fresh, "sdom-create", "halted", "--name", "cold"))
    ok(xm(fresh, "sdom-add", "web", "zeta"))
    ok(xm(fresh, "sdom-add", "web", "alpha"))
    x.VM.set_sched_cap(web, "40", "dynamic")  # in force now; the stored cap stays 20
    assert lines(ok(xm(fresh, "sdom-list"))) == [HEADER, row("cold", "halted", 128, 30, "-"),
                                                  row("web", "web", 512, 40, "alpha,zeta")]
    assert lines(ok(xm(fresh, "sdom-list", "web"))) == [HEADER, row("web", "web", 512, 40, "alpha,zeta")]
    assert lines(ok(xm(fresh, "sdom-list", "cold"))) == [HEADER, row("cold", "halted", 128, 30, "-")]
    assert error(xm(fresh, "sdom-list", "nope")).startswith("Error: Scheduling domain 'nope' does not exist")
    assert "not allowed with argument" in error(xm(fresh, "sdom-list", "-l", "--json"), 2)


def _ten_percent(x):
    """The seed's set-up: web capped at 10 and stub, both on pCPU 0, stub in web's domain."""
    web = vm(x, "web", running=True, VCPUs_params={**PIN0, "cap": "10"})
    stub = vm(x, "stub", running=True, VCPUs_params=PIN0)
    idle = vm(x, "idle")
    sd = x.sched_domain.create({"master": web, "members": [stub, idle], "other_config": {"k": "v"}})
    return sd, web, stub, idle


def test_list_long_is_one_sxp_per_domain_with_utilisation(fresh, x):
    sd, _web, _stub, _idle = _ten_percent(x)
    vm(x, "other")
    x.sched_domain.create({"master": x.VM.get_by_name_label("other")[0], "name_label": "b-other"})
    out = ok(xm(fresh, "sdom-list", "-l"))
    nodes = sxp.load_all(out)
    assert [sxp.child_value(n, "name") for n in nodes] == ["b-other", "web"]
    node = nodes[1]
    assert node[0] == "sched_domain"
    assert sxp.child_value(node, "uuid") == x.sched_domain.get_uuid(sd)
    assert sxp.child_value(node, "master") == "web"
    assert sxp.child(node, "members") == ["members", "idle", "stub"]
    assert (sxp.child_value(node, "weight"), sxp.child_value(node, "cap")) == ("256", "10")
    assert sxp.child(node, "utilisation") == ["utilisation", ["web", "0.050"], ["idle", "0.000"], ["stub", "0.050"]]
    assert sxp.child_value(node, "total_utilisation") == "0.100"
    assert sxp.child(node, "other_config") == ["other_config", ["k", "v"]]
    assert sxp.child(nodes[0], "members") == ["members"]
    assert sxp.child(nodes[0], "utilisation") == ["utilisation", ["other", "0.000"]]
    assert "(sched_domain" in out and out.count("(sched_domain") == 2


def test_list_json_is_the_records_with_names_and_utilisation(fresh, x):
    sd, web, stub, idle = _ten_percent(x)
    (record,) = json.loads(ok(xm(fresh, "sdom-list", "--json")))
    assert record == {**x.sched_domain.get_record(sd), "ref": sd, "master_name": "web",
                      "member_names": ["idle", "stub"], "weight": 256, "cap": 10,
                      "utilisation": {"web": pytest.approx(0.05), "idle": 0.0, "stub": pytest.approx(0.05)}}
    assert record["master"] == web and record["members"] == [stub, idle]
    reset(fresh)
    assert json.loads(ok(xm(fresh, "sdom-list", "--json"))) == []
    assert ok(xm(fresh, "sdom-list", "-l")) == ""


# -- sched-credit ----------------------------------------------------------------------------------

def test_sdom_of_names_the_domain_a_vm_shares(fresh, x):
    web, stub, free = vm(x, "web"), vm(x, "stub"), vm(x, "free")
    x.sched_domain.create({"master": web, "members": [stub], "name_label": "front"})
    client = Client(fresh.url, "root", "")
    try:
        assert sdom_of(client, web) == "  sdom=front (master)"
        assert sdom_of(client, stub) == "  sdom=front (member: web's weight and cap apply)"
        assert sdom_of(client, free) == ""
        assert sdom_of(client, x.VM.get_by_name_label("Domain-0")[0]) == ""
    finally:
        client.close()


def test_sched_credit_shows_the_scheduling_domain_a_vm_shares(fresh, x):
    """Needs sched.py's row to end with ``+ sdom.sdom_of(client, d.ref)`` (the lead's one-line change)."""
    web = vm(x, "web", running=True, VCPUs_params={"cap": "10"})
    stub = vm(x, "stub", running=True)
    vm(x, "free")
    x.sched_domain.create({"master": web, "members": [stub]})
    out = lines(ok(xm(fresh, "sched-credit")))
    by_name = {line.split()[0]: line for line in out[1:]}
    web_id, stub_id = x.VM.get_domid(web), x.VM.get_domid(stub)
    assert by_name["web"] == "%-32s %5s %6d %4d" % ("web", web_id, 256, 10) + "  sdom=web (master)"  # noqa: UP031
    assert by_name["stub"] == "%-32s %5s %6d %4d" % ("stub", stub_id, 256, 0) + \
        "  sdom=web (member: web's weight and cap apply)"  # noqa: UP031
    assert by_name["free"] == "%-32s %5s %6d %4d" % ("free", "", 256, 0)  # noqa: UP031


# -- roles, help -----------------------------------------------------------------------------------

def test_a_vm_operator_may_add_and_remove_but_not_create(make_server, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    add_user(state, "admin", "adm", "pool-admin")
    add_user(state, "op", "op-pw", "vm-operator")
    server = make_server("--auth", "file", "--cpus", "2", state_dir=state, unix=False)
    s = XenAPI.Session(server.url)
    s.xenapi.login_with_password("admin", "adm", "1.0", "tests")
    a = s.xenapi
    web, stub = vm(a, "web"), vm(a, "stub")
    as_op = ("-u", "op", "-p", "op-pw")
    assert error(xm(server, *as_op, "sdom-create", "web")) == \
        "Error: your role may not do sched_domain.create; log in as a user with more rights"
    sd = a.sched_domain.create({"master": web})
    ok(xm(server, *as_op, "sdom-add", "web", "stub"))
    assert a.sched_domain.get_members(sd) == [stub]
    ok(xm(server, *as_op, "sdom-remove", "stub"))
    assert error(xm(server, *as_op, "sdom-destroy", "web")) == \
        "Error: your role may not do sched_domain.destroy; log in as a user with more rights"
    assert a.sched_domain.get_all() == [sd]


def test_help_describes_every_command(fresh):
    for command, words in {"sdom-create": ("MASTER", "--name"), "sdom-add": ("MASTER_OR_SDOM", "DOMAIN"),
                           "sdom-remove": ("DOMAIN",), "sdom-destroy": ("SDOM_OR_MASTER",),
                           "sdom-list": ("-l", "--json", "SDOM")}.items():
        out = ok(xm(fresh, command, "--help"))
        assert all(word in out for word in words), (command, out)
    summary = ok(xm(fresh, "--help"))
    assert all(c in summary for c in ("sdom-create", "sdom-add", "sdom-remove", "sdom-destroy", "sdom-list"))


# -- the example ---------------------------------------------------------------------------------

def test_ten_percent_example(fresh, x, tmp_path):
    assert shutil.which("sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env.update(XM_CONF="/nonexistent/xm.conf", XM=f"{sys.executable} -m xend_ext.cli.main", PYTHON=sys.executable)
    result = subprocess.run(["sh", str(EXAMPLE), fresh.url], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    start, capped, shared, free = out.split("\n== ")[1:]
    assert "nemesis-guest  0.50 of a pCPU\nnemesis-stub   0.50 of a pCPU\ntogether       1.00\n" in start
    assert "nemesis-guest  0.10 of a pCPU\nnemesis-stub   0.90 of a pCPU\ntogether       1.00\n" in capped
    assert "%-32s" % "nemesis-guest" in capped  # noqa: UP031 the sched-credit row
    assert "Scheduling domain 'nemesis-guest' created with master 'nemesis-guest'." in shared
    assert row("nemesis-guest", "nemesis-guest", 256, 10, "nemesis-stub") in shared
    assert "nemesis-guest  0.05 of a pCPU\nnemesis-stub   0.05 of a pCPU\ntogether       0.10\n" in shared
    assert "(utilisation (nemesis-guest 0.050) (nemesis-stub 0.050))" in shared
    assert "(total_utilisation 0.100)" in shared
    assert row("nemesis-guest", "nemesis-guest", 256, 10, "-") in free
    assert "nemesis-guest  0.10 of a pCPU\nnemesis-stub   0.90 of a pCPU\ntogether       1.00\n" in free
    # it cleans up after itself
    assert x.sched_domain.get_all() == [] and x.VM.get_by_name_label("nemesis-guest") == []



def test_pool_mismatch_sentence_for_errors_py():
    """sdom.pool_mismatch is the template errors.MESSAGES can use for SCHED_DOMAIN_POOL_MISMATCH raised by
    other commands (xm cpupool-migrate of a member)."""
    ctx = Context("cpupool-migrate", {"OpaqueRef:1": "my stub"})
    assert pool_mismatch(["OpaqueRef:1", "Pool-0"], ctx) == (
        "domain 'my stub' is in a scheduling domain, whose domains all run in its master's pool 'Pool-0'; moving "
        "the master with 'xm cpupool-migrate MASTER POOL' moves them all ('xm sdom-list' shows the masters), or "
        "take it out first with 'xm sdom-remove 'my stub''")
