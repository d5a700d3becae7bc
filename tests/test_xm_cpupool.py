"""``xm cpupool-*`` as a user runs them: a real ``xm`` process against a real server.

One 8-CPU server serves the module; every test starts from the boot state (Pool-0 with every
CPU, no other pool, no domain but Domain-0), which the ``fresh`` fixture puts back after each
test over XML-RPC. numa-split gets a 2-node server of its own. Outputs, exit codes and the
server's state after each command are what is checked; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess
from vmkit import BOOT_FIELDS, BOTH, NO_NUMA, modelled, sim_only
from xmkit import error, ok, xm

from xend_ext import sxp
from xend_ext.cli import pool_config
from xend_ext.cli.domain_config import ConfigError, Source

pytestmark = pytest.mark.backends(*BOTH)

EXAMPLE = ROOT / "examples" / "cpupool"
LIST_HEADER = "Name               CPUs   Sched     Active   Domain count"
CPUS_HEADER = "Name             CPU list"
BRIEF_HEADER = "Name                                        ID   Mem VCPUs      State   Time(s)"


def pool0_row(srv, ncpus: int = 8) -> str:
    """Pool-0's row of ``xm cpupool-list``: it runs the host's default scheduler."""
    return f"Pool-0{ncpus:>16}{srv.host.sched:>10}       y          1"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    server = ServerProcess(tmp_path_factory.mktemp("xm-cpupool") / "state", "--cpus", "8", host=backend).start()
    yield server
    server.stop()


def value(reply: dict):
    assert reply["Status"] == "Success", reply
    return reply["Value"]


def reset(server: ServerProcess) -> None:
    """Back to the boot state: no domain but Domain-0, Pool-0 alone with every CPU."""
    proxy, session = server.login()
    for ref, rec in value(proxy.VM.get_all_records(session)).items():
        if rec["is_control_domain"]:
            continue
        if rec["power_state"] != "Halted":
            value(proxy.VM.hard_shutdown(session, ref))
        value(proxy.VM.destroy(session, ref))
    pool0 = None
    for ref, rec in value(proxy.cpu_pool.get_all_records(session)).items():
        if rec["name_label"] == "Pool-0":
            pool0 = ref
            continue
        if rec["activated"]:
            value(proxy.cpu_pool.deactivate(session, ref))
        value(proxy.cpu_pool.destroy(session, ref))
    for ref in value(proxy.host_cpu.get_unassigned_cpus(session)):
        value(proxy.cpu_pool.add_host_CPU_live(session, pool0, ref))


@pytest.fixture
def fresh(srv):
    yield srv
    reset(srv)




def pool_record(server, name: str) -> dict | None:
    proxy, session = server.login()
    refs = value(proxy.cpu_pool.get_by_name_label(session, name))
    return value(proxy.cpu_pool.get_record(session, refs[0])) if refs else None


def free(server, *cpus: int) -> None:
    ok(xm(server, "cpupool-cpu-remove", "Pool-0", ",".join(map(str, cpus))))


def write(tmp_path: Path, filename: str, text: str) -> str:
    path = tmp_path / filename
    path.write_text(text)
    return str(path)


def make_vm(server, tmp_path: Path, name: str, pool: str, vcpus: int = 2) -> None:
    kernel = f'kernel = "{BOOT_FIELDS["PV_kernel"]}"\n' if BOOT_FIELDS.get("PV_kernel") else ""  # xl: a PV kernel
    cfg = write(tmp_path, f"{name}.cfg", f'name = "{name}"\nmemory = 128\nvcpus = {vcpus}\npool = "{pool}"\n{kernel}')
    ok(xm(server, "create", cfg))


def table(stdout: str) -> list[str]:
    return stdout.rstrip("\n").split("\n")


# -- cpupool-list ----------------------------------------------------------------------------

def test_list_formats_at_boot(srv):
    assert table(ok(xm(srv, "cpupool-list"))) == [LIST_HEADER, pool0_row(srv)]
    assert table(ok(xm(srv, "cpupool-list", "-c"))) == [CPUS_HEADER, "Pool-0           0,1,2,3,4,5,6,7"]
    assert table(ok(xm(srv, "cpupool-list", "Pool-0", "--cpus"))) == [CPUS_HEADER, "Pool-0           0,1,2,3,4,5,6,7"]
    long = sxp.loads(ok(xm(srv, "cpupool-list", "-l")))
    uuid = pool_record(srv, "Pool-0")["uuid"]
    assert long[0] == uuid
    fields = {item[0]: item[1:] for item in long[1:]}
    assert fields["name_label"] == ["Pool-0"]
    assert fields["ncpu"] == ["8"]
    assert fields["sched_policy"] == [srv.host.sched]
    assert fields["activated"] == ["1"]
    assert fields["host_CPU_numbers"] == [str(n) for n in range(8)]
    assert fields["started_VM_names"] == ["Domain-0"]
    assert {"proposed_CPUs", "auto_power_on", "other_config"} <= set(fields)
    records = json.loads(ok(xm(srv, "cpupool-list", "--json")))
    assert [r["name_label"] for r in records] == ["Pool-0"]
    assert records[0]["host_CPU_numbers"] == list(range(8)) and records[0]["started_VM_names"] == ["Domain-0"]
    assert records[0]["uuid"] == uuid and records[0]["activated"] is True


def test_list_errors(srv):
    assert error(xm(srv, "cpupool-list", "nope")) == "Error: Pool 'nope' does not exist."
    assert "not allowed with argument" in error(xm(srv, "cpupool-list", "-l", "-c"), 2)


# -- new / create: configs ---------------------------------------------------------------------

def test_dryrun_prints_the_sxp_and_creates_nothing(srv):
    for command in ("cpupool-new", "cpupool-create"):
        out = ok(xm(srv, command, "-n", "web.pool", "--path", str(EXAMPLE)))
        assert sxp.loads(out) == ["pool", ["name_label", "web"], ["sched_policy", "credit"], ["ncpu", "2"],
                                  ["proposed_CPUs", "2", "3"],
                                  ["other_config", ["owner", "web-team"], ["tier", "frontend"]],
                                  ["auto_power_on", "0"], ["name_description", "front-end web servers"]]
    assert pool_record(srv, "web") is None


def test_var_overrides(srv, tmp_path):
    cfg = write(tmp_path, "small.pool", 'name = "small"\n')
    node = sxp.loads(ok(xm(srv, "cpupool-new", "-n", cfg)))
    assert node == ["pool", ["name_label", "small"], ["sched_policy", "credit"], ["ncpu", "1"]]
    out = ok(xm(srv, "cpupool-create", "--dryrun", cfg, "name=db", "sched=credit2", "cpus=0-3,^1",
                'other_config=["a=1", "b=x y"]', "auto_power_on=True", "description=the database"))
    assert sxp.loads(out) == ["pool", ["name_label", "db"], ["sched_policy", "credit2"], ["ncpu", "3"],
                              ["proposed_CPUs", "0", "2", "3"], ["other_config", ["a", "1"], ["b", "x y"]],
                              ["auto_power_on", "1"], ["name_description", "the database"]]
    assert sxp.child_value(sxp.loads(ok(xm(srv, "cpupool-new", "-n", cfg, "cpus=#3"))), "ncpu") == "3"
    assert sxp.loads(ok(xm(srv, "cpupool-new", "-n", cfg, "cpus=2,5")))[3:] == [["ncpu", "2"],
                                                                               ["proposed_CPUs", "2", "5"]]
    # -f names the config too, and the name defaults to the file's name without its extension
    nameless = write(tmp_path, "batch.pool", "cpus = 4\n")
    assert sxp.loads(ok(xm(srv, "cpupool-new", "-n", "-f", nameless)))[1:4] == [
        ["name_label", "batch"], ["sched_policy", "credit"], ["ncpu", "4"]]


@pytest.mark.parametrize(("value", "ncpu", "proposed"), [
    (4, 4, []), ("#4", 4, []), ("0-3,^1", 3, [0, 2, 3]), (["2", "3"], 2, [2, 3]), (["1-2", 5], 3, [1, 2, 5]),
    ("3", 1, [3]),
])
def test_cpus_forms(value, ncpu, proposed):
    assert pool_config.cpus_value(value, Source("x.pool")) == (ncpu, proposed)


@pytest.mark.parametrize(("value", "message"), [
    (0, "at least 1 CPU"), ("#x", "after '#'"), ("1-x", "not a CPU number"), ([], "must be a number of CPUs"),
    (True, "must be a number of CPUs"), ("3-1", "runs backwards"),
])
def test_cpus_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        pool_config.cpus_value(value, Source("x.pool", {"cpus": 2}))


def test_config_errors(srv, tmp_path):
    cfg = write(tmp_path, "bad.pool", 'name = "bad"\nshced = "credit"\n')
    assert error(xm(srv, "cpupool-new", cfg)) == \
        f"Error: {cfg}, line 2: unknown variable 'shced'; did you mean 'sched'?"
    cfg = write(tmp_path, "code.pool", 'import os\nname = os.getcwd()\n')
    assert "only 'variable = value' lines are allowed" in error(xm(srv, "cpupool-new", cfg))
    cfg = write(tmp_path, "ok.pool", 'name = "ok"\n')
    assert "unknown variable 'cpu'" in error(xm(srv, "cpupool-new", cfg, "cpu=2"))
    assert "other_config entries" in error(xm(srv, "cpupool-new", cfg, "other_config=['novalue']"))
    assert "config file 'missing.pool' not found" in error(xm(srv, "cpupool-new", "missing.pool"))
    assert "give a pool config file" in error(xm(srv, "cpupool-new"), 2)
    assert pool_record(srv, "bad") is None and pool_record(srv, "ok") is None


def test_raw_sxp_config(fresh, tmp_path):
    srv = fresh
    sxp_file = tmp_path / "web.sxp"
    sxp_file.write_text(ok(xm(srv, "cpupool-new", "-n", str(EXAMPLE / "web.pool"), "name=rawweb")))
    out = ok(xm(srv, "cpupool-new", "-F", str(sxp_file)))
    assert out == "Pool 'rawweb' defined; start it with 'xm cpupool-start rawweb'.\n"
    rec = pool_record(srv, "rawweb")
    assert (rec["ncpu"], rec["proposed_CPUs"], rec["sched_policy"]) == ("2", ["2", "3"], "credit")
    assert rec["other_config"] == {"owner": "web-team", "tier": "frontend"}
    assert rec["name_description"] == "front-end web servers" and rec["activated"] is False
    # written by hand: a CPU list alone sets ncpu; create also activates
    free(srv, 6, 7)
    hand = write(tmp_path, "hand.sxp", "# a raw pool config\n(pool (name_label hand) (sched_policy credit2)\n"
                                       "      (proposed_CPUs 6 7) (other_config (k v)))\n")
    assert ok(xm(srv, "cpupool-create", "--config", hand)) == "Pool 'hand' started with CPUs 6,7 (credit2).\n"
    assert "VAR=VALUE settings apply to Python-syntax configs only" in error(
        xm(srv, "cpupool-new", "-F", hand, "name=x"), 2)
    assert "not a raw SXP pool config" in error(xm(srv, "cpupool-new", "-F", str(EXAMPLE / "web.pool")))
    typo = write(tmp_path, "typo.sxp", "(pool (name_label t) (ncpus 2))")
    assert "unknown field 'ncpus'; did you mean 'ncpu'?" in error(xm(srv, "cpupool-new", "-F", typo))


# -- lifecycle -------------------------------------------------------------------------------

def test_create_destroy_start_delete(fresh):
    srv = fresh
    free(srv, 2, 3)
    assert ok(xm(srv, "cpupool-create", "web.pool", cwd=EXAMPLE)) == "Pool 'web' started with CPUs 2,3 (credit).\n"
    assert table(ok(xm(srv, "cpupool-list"))) == [
        LIST_HEADER, pool0_row(srv, 6),
        "web                  2    credit       y          0"]
    assert table(ok(xm(srv, "cpupool-list", "-c"))) == [CPUS_HEADER, "Pool-0           0,1,4,5,6,7",
                                                         "web              2,3"]
    assert error(xm(srv, "cpupool-delete", "web")) == \
        "Error: pool \"web\" is active; run 'xm cpupool-destroy web' first"
    assert error(xm(srv, "cpupool-start", "web")) == 'Error: pool "web" is already active'
    # seed 000: destroy deletes a pool that cpupool-create made (issue 17 item 3)
    ok(xm(srv, "cpupool-destroy", "web"))
    assert pool_record(srv, "web") is None
    assert error(xm(srv, "cpupool-destroy", "web")) == "Error: Pool 'web' does not exist."
    # one that cpupool-new defined stays defined
    ok(xm(srv, "cpupool-new", "web.pool", cwd=EXAMPLE))
    assert ok(xm(srv, "cpupool-start", "web")) == "Pool 'web' started with CPUs 2,3 (credit).\n"
    ok(xm(srv, "cpupool-destroy", "web"))
    assert table(ok(xm(srv, "cpupool-list", "web"))) == [LIST_HEADER,
                                                         "web                  2    credit       n          0"]
    assert table(ok(xm(srv, "cpupool-list", "-c", "web"))) == [CPUS_HEADER, "web              -"]
    assert error(xm(srv, "cpupool-destroy", "web")) == 'Error: pool "web" is not active'
    assert ok(xm(srv, "cpupool-start", "web")) == "Pool 'web' started with CPUs 2,3 (credit).\n"
    ok(xm(srv, "cpupool-destroy", "web"))
    ok(xm(srv, "cpupool-delete", "web"))
    assert pool_record(srv, "web") is None
    assert error(xm(srv, "cpupool-start", "web")) == "Error: Pool 'web' does not exist."


def test_new_then_start_by_uuid(fresh):
    srv = fresh
    assert ok(xm(srv, "cpupool-new", "--path", f"/nonexistent:{EXAMPLE}", "web.pool", "cpus=2")) == \
        "Pool 'web' defined; start it with 'xm cpupool-start web'.\n"
    assert table(ok(xm(srv, "cpupool-list"))) == [LIST_HEADER, pool0_row(srv),
                                                  "web                  2    credit       n          0"]
    free(srv, 7, 5)
    uuid = pool_record(srv, "web")["uuid"]
    assert ok(xm(srv, "cpupool-start", uuid)) == "Pool 'web' started with CPUs 5,7 (credit).\n"


def test_create_without_enough_cpus_leaves_nothing(fresh):
    srv = fresh
    free(srv, 2)
    result = xm(srv, "cpupool-create", str(EXAMPLE / "web.pool"))
    lines = error(result).split("\n")
    assert lines == ["Pool 'web' was not created (its definition was removed again):",
                     "Error: pool \"web\" needs 2 CPUs but only 1 is free; free enough first with "
                     "'xm cpupool-cpu-remove Pool-0 3' ('xm cpupool-list -c' shows which pool has each CPU), "
                     "or ask for fewer (cpus=N)"]
    assert pool_record(srv, "web") is None
    # started later, a pool short of CPUs names the CPUs to free: its proposed ones first
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "cpus=3-5"))
    assert "needs 3 CPUs but only 1 is free; free enough first with 'xm cpupool-cpu-remove Pool-0 4-5'" in error(
        xm(srv, "cpupool-start", "web"))
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "name=any", "cpus=4"))
    assert "free enough first with 'xm cpupool-cpu-remove Pool-0 5-7'" in error(xm(srv, "cpupool-start", "any"))
    assert pool_record(srv, "web")["activated"] is False


def test_pool_errors(fresh, tmp_path):
    srv = fresh
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool")))
    assert error(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"))) == (
        "Error: a pool called \"web\" already exists; choose another name (name=... on the command line), "
        "or remove the old one with 'xm cpupool-delete web'")
    assert error(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "name=db", "sched=fifo")) == (
        'Error: unknown scheduler for pool "db": use credit or credit2 (sched = "credit" in the pool config)')
    assert error(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "name=a b")).startswith(
        'Error: Invalid Pool Name "a b"')
    assert error(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "name=db", "cpus=7-8")) == (
        "Error: invalid CPU: no pCPU 8 on this host (it has 8) ('xm info' shows the host's nr_cpus)")
    assert error(xm(srv, "cpupool-delete", "Pool-0")) == \
        "Error: Pool-0 cannot be destroyed: it is the host's boot pool, where Domain-0 runs"
    assert error(xm(srv, "cpupool-destroy", "Pool-0")) == \
        "Error: Pool-0 cannot be deactivated: it is the host's boot pool, where Domain-0 runs"
    assert error(xm(srv, "cpupool-delete", "nope")) == "Error: Pool 'nope' does not exist."
    assert pool_record(srv, "db") is None


# -- CPUs ------------------------------------------------------------------------------------

def test_cpu_add_and_remove(fresh):
    srv = fresh
    ok(xm(srv, "cpupool-cpu-remove", "Pool-0", "6"))
    assert ok(xm(srv, "info")).count("free_cpus              : 1") == 1
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "cpus=1"))
    ok(xm(srv, "cpupool-start", "web"))
    assert table(ok(xm(srv, "cpupool-list", "-c", "web"))) == [CPUS_HEADER, "web              6"]
    ok(xm(srv, "cpupool-cpu-remove", "Pool-0", "7"))
    ok(xm(srv, "cpupool-cpu-add", "web", "7"))
    rec = pool_record(srv, "web")
    assert (rec["ncpu"], rec["proposed_CPUs"]) == ("2", ["6", "7"])  # the definition follows
    assert error(xm(srv, "cpupool-cpu-add", "web", "3")) == (
        "Error: CPU 3 is already in pool \"Pool-0\"; take it out there first with 'xm cpupool-cpu-remove Pool-0 3'")
    assert error(xm(srv, "cpupool-cpu-remove", "web", "3")) == (
        "Error: CPU 3 is not in pool \"web\"; 'xm cpupool-list -c' shows which pool has each CPU")
    assert error(xm(srv, "cpupool-cpu-add", "web", "8")) == "Error: cpu number unknown: 8 (this host has CPUs 0-7)"
    assert error(xm(srv, "cpupool-cpu-add", "web", "x"), 2).endswith(
        "error: CPU must be a CPU number such as 3 (or a list such as 4-7), not 'x'")
    # a list where one CPU is refused changes nothing
    ok(xm(srv, "cpupool-cpu-remove", "Pool-0", "1"))
    assert "CPU 2 is already in pool" in error(xm(srv, "cpupool-cpu-add", "web", "1-2"))
    assert table(ok(xm(srv, "cpupool-list", "-c"))) == [CPUS_HEADER, "Pool-0           0,2,3,4,5",
                                                         "web              6,7"]
    ok(xm(srv, "cpupool-cpu-remove", "Pool-0", "2-5"))
    assert error(xm(srv, "cpupool-cpu-remove", "Pool-0", "0")) == (
        'Error: CPU 0 is the last CPU of pool "Pool-0", where Domain-0 always runs; Pool-0 keeps at least one CPU')
    ok(xm(srv, "cpupool-cpu-add", "web", "1-5"))
    assert table(ok(xm(srv, "cpupool-list"))) == [LIST_HEADER, pool0_row(srv, 1),
                                                  "web                  7    credit       y          0"]
    ok(xm(srv, "cpupool-destroy", "web"))
    assert error(xm(srv, "cpupool-cpu-add", "web", "1")) == (
        "Error: pool \"web\" is not active; only an active pool has CPUs to add or remove. "
        "Start it with 'xm cpupool-start web'")


# -- domains ---------------------------------------------------------------------------------

def test_domains_in_pools(fresh, tmp_path):
    srv = fresh
    free(srv, 2, 3, 4)
    ok(xm(srv, "cpupool-create", str(EXAMPLE / "web.pool")))
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool"), "name=batch", "cpus=1"))
    make_vm(srv, tmp_path, "w1", "web")
    make_vm(srv, tmp_path, "w2", "web")
    listing = table(ok(xm(srv, "list", "--pool=web")))
    assert listing[0] == BRIEF_HEADER and [row.split()[0] for row in listing[1:]] == ["w1", "w2"]
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool", "Pool-0")))[1:]] == ["Domain-0"]
    assert table(ok(xm(srv, "list", "--pool=batch"))) == [BRIEF_HEADER]
    assert error(xm(srv, "list", "--pool=nope")) == "Error: Pool 'nope' does not exist."
    assert "either a pool or a particular VM" in error(xm(srv, "list", "--pool=web", "w1"), 2)
    assert table(ok(xm(srv, "cpupool-list", "web"))) == [LIST_HEADER,
                                                         "web                  2    credit       y          2"]
    fields = {item[0]: item[1:] for item in sxp.loads(ok(xm(srv, "cpupool-list", "-l", "web")))[1:]}
    assert fields["host_CPU_numbers"] == ["2", "3"] and fields["started_VM_names"] == ["w1", "w2"]
    assert error(xm(srv, "cpupool-destroy", "web")) == (
        "Error: domains still run in pool \"web\" (w1, w2); shut them down, or move them to another pool with "
        "'xm cpupool-migrate DOMAIN Pool-0', first")
    # a running domain moves only to an active pool; a halted one starts in its new pool next time
    assert error(xm(srv, "cpupool-migrate", "w2", "batch")) == (
        "Error: pool \"batch\" is not active; start it first with 'xm cpupool-start batch' (a halted domain may be "
        "moved to an inactive pool; it then starts there once the pool is active)")
    ok(xm(srv, "cpupool-start", "batch"))
    ok(xm(srv, "cpupool-migrate", "w2", "batch"))
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool=batch")))[1:]] == ["w2"]
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool=web")))[1:]] == ["w1"]
    assert error(xm(srv, "cpupool-migrate", "Domain-0", "web")) == \
        "Error: Domain-0 always runs in Pool-0; it cannot be moved to another pool"
    assert error(xm(srv, "cpupool-migrate", "nobody", "web")) == "Error: Domain 'nobody' does not exist."
    assert error(xm(srv, "cpupool-migrate", "w1", "nope")) == "Error: Pool 'nope' does not exist."
    ok(xm(srv, "cpupool-cpu-remove", "web", "2"))
    assert error(xm(srv, "cpupool-cpu-remove", "web", "3")) == (
        "Error: CPU 3 is the last CPU of pool \"web\"; an active pool keeps at least one CPU (seed 000). "
        "'xm cpupool-destroy web' frees them all once no domain runs there")
    # a domain whose pool is inactive: starting it says which pool and what to do
    ok(xm(srv, "destroy", "w2"))
    ok(xm(srv, "cpupool-destroy", "batch"))
    assert error(xm(srv, "start", "w2")) == (
        "Error: domain 'w2' starts in pool \"batch\", which is not active; start the pool with "
        "'xm cpupool-start batch', or move the domain to an active one with 'xm cpupool-migrate w2 Pool-0'")
    ok(xm(srv, "cpupool-migrate", "w2", "Pool-0"))  # halted: retargeted
    ok(xm(srv, "start", "w2"))
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool=Pool-0")))[1:]] == ["Domain-0", "w2"]


def test_rename_keeps_the_domains(fresh, tmp_path):
    srv = fresh
    free(srv, 2, 3)
    ok(xm(srv, "cpupool-create", str(EXAMPLE / "web.pool")))
    make_vm(srv, tmp_path, "r1", "web")
    ok(xm(srv, "cpupool-rename", "web", "front"))
    assert pool_record(srv, "web") is None and pool_record(srv, "front")["activated"] is True
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool=front")))[1:]] == ["r1"]
    ok(xm(srv, "cpupool-new", str(EXAMPLE / "web.pool")))
    assert error(xm(srv, "cpupool-rename", "web", "front")) == \
        'Error: a pool called "front" already exists; choose another name'
    assert error(xm(srv, "cpupool-rename", "Pool-0", "boot")) == \
        "Error: Pool-0 cannot be renamed: it is the host's boot pool, where Domain-0 runs"


def test_an_active_pool_keeps_its_last_cpu(fresh, tmp_path):
    """Issue 17 item 4, seed 000: the last CPU of an active pool cannot be removed explicitly, with
    or without domains; a list taking them all changes nothing."""
    srv = fresh
    free(srv, 2, 3)
    ok(xm(srv, "cpupool-create", str(EXAMPLE / "web.pool")))
    assert error(xm(srv, "cpupool-cpu-remove", "web", "2-3")) == (
        "Error: that is every CPU of pool \"web\"; an active pool keeps at least one (seed 000). "
        "'xm cpupool-destroy web' frees them all")
    assert table(ok(xm(srv, "cpupool-list", "-c", "web"))) == [CPUS_HEADER, "web              2,3"]
    ok(xm(srv, "cpupool-cpu-remove", "web", "2"))
    assert error(xm(srv, "cpupool-cpu-remove", "web", "3")) == (
        "Error: CPU 3 is the last CPU of pool \"web\"; an active pool keeps at least one CPU (seed 000). "
        "'xm cpupool-destroy web' frees them all once no domain runs there")
    make_vm(srv, tmp_path, "n1", "web")
    assert [row.split()[0] for row in table(ok(xm(srv, "list", "--pool=web")))[1:]] == ["n1"]


# -- the deprecated names --------------------------------------------------------------------

@pytest.mark.parametrize(("alias", "args", "code"), [
    ("pool-list", [], 0), ("pool-new", ["-n", str(EXAMPLE / "web.pool")], 0),
    ("pool-create", ["-n", str(EXAMPLE / "web.pool")], 0), ("pool-start", ["nope"], 1),
    ("pool-destroy", ["nope"], 1), ("pool-delete", ["nope"], 1), ("pool-cpu-add", ["nope", "1"], 1),
    ("pool-cpu-remove", ["nope", "1"], 1), ("pool-migrate", ["Domain-0", "nope"], 1),
])
def test_deprecated_aliases(srv, alias, args, code):
    result = xm(srv, alias, *args)
    assert result.returncode == code, result.stderr
    new = alias.replace("pool-", "cpupool-", 1)
    lines = result.stderr.strip().split("\n")
    assert lines[0] == f"Command {alias} is deprecated.  Please use xm {new} instead."
    if code:
        assert lines[1:] == ["Error: Pool 'nope' does not exist."]
    if alias == "pool-list":
        assert table(result.stdout) == [LIST_HEADER, pool0_row(srv)]


# -- numa-split ------------------------------------------------------------------------------

@sim_only(NO_NUMA)
def test_numa_split(tmp_path, backend):
    server = ServerProcess(tmp_path / "state", "--cpus", "8", "--numa-nodes", "2", host=backend).start()
    try:
        ok(xm(server, "cpupool-cpu-remove", "Pool-0", "1"))  # a free node-0 CPU goes back to Pool-0
        assert table(ok(xm(server, "cpupool-numa-split"))) == [CPUS_HEADER, "Pool-0           0,1,2,3",
                                                               "Pool-node1       4,5,6,7"]
        assert table(ok(xm(server, "cpupool-list"))) == [
            LIST_HEADER, "Pool-0               4    credit       y          1",
            "Pool-node1           4    credit       y          0"]
        assert "free_cpus              : 0" in ok(xm(server, "info"))
        assert error(xm(server, "cpupool-numa-split")) == (
            "Error: numa-split makes one pool per NUMA node on a host with Pool-0 only, but Pool-node1 exists; "
            "deactivate and remove it first ('xm cpupool-destroy POOL', then 'xm cpupool-delete POOL')")
    finally:
        server.stop()


def test_numa_split_needs_several_nodes(srv):
    assert error(xm(srv, "cpupool-numa-split")) == (
        "Error: this host has a single NUMA node, so there is nothing to split ('xm info' shows nr_nodes)")


# -- the example -----------------------------------------------------------------------------

def test_two_pools_example(fresh):
    srv = fresh
    assert shutil.which("sh")
    xm_cmd = f"{sys.executable} -m xend_ext.cli.main"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XM_")}
    env.update(XM_CONF="/nonexistent/xm.conf", XM=xm_cmd, PYTHON=sys.executable,
               KERNEL=BOOT_FIELDS.get("PV_kernel", ""))
    result = subprocess.run(["sh", str(EXAMPLE / "two_pools.sh"), srv.url], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Pool 'web' started with CPUs 2,3 (credit)." in out
    assert "Pool 'batch' started with CPUs 4,5 (credit)." in out
    assert "batch            4,5\nweb              2,3\n" in out
    before, after = out.split("== After", 1)
    for name, pool, text in (("web1", "web", before), ("web2", "web", before), ("job1", "batch", before),
                             ("web1", "web", after), ("web2", "batch", after), ("job1", "batch", after)):
        assert f"{name}   pool={pool} " in text, (name, pool, text)
    if modelled(srv):  # the shares of the sim's scheduler model
        check_two_pools_shares(before, after)
    # it cleans up after itself: the boot state again
    assert table(ok(xm(srv, "cpupool-list"))) == [LIST_HEADER, pool0_row(srv)]
    assert [row.split()[0] for row in table(ok(xm(srv, "list")))[1:]] == ["Domain-0"]


def check_two_pools_shares(before: str, after: str) -> None:
    assert "web1   pool=web     vCPU 0: 0.50  vCPU 1: 0.50" in before
    assert "web2   pool=web     vCPU 0: 0.50  vCPU 1: 0.50" in before
    assert "job1   pool=batch   vCPU 0: 1.00  vCPU 1: 1.00" in before
    assert "web1   pool=web     vCPU 0: 1.00  vCPU 1: 1.00" in after
    assert "web2   pool=batch   vCPU 0: 0.50  vCPU 1: 0.50" in after
    assert "job1   pool=batch   vCPU 0: 0.50  vCPU 1: 0.50" in after
