"""Helpers of the cpu_pool tests: the official client against a real server, and looks at the
hypervisor's pools: the simulated host's from its state file (``<state dir>/sim-host.sxp``), without
going through the server under test; another backend's through the server's live view (the pools
it reports active, with the pCPUs the backend gives them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmkit import event_from, failure, new_vm, on_sim, root_client, session, unique

from xend_ext import sxp

CPUS = 8  # every server of these tests simulates an 8-pCPU host

__all__ = ["CPUS", "PoolKit", "add_user", "backend_pools", "event_from", "failure", "unique"]


def add_user(state_dir, user: str, password: str, role: str) -> None:
    """``xend-ext passwd`` into a state dir (for ``--auth file``), as tests/test_auth.py does."""
    subprocess.run([sys.executable, "-m", "xend_ext", "passwd", user, "--role", role, "--state-dir", str(state_dir),
                    "--password-stdin"], input=password + "\n", text=True, check=True, capture_output=True)


def backend_pools(server, x=None) -> dict[str, dict]:
    """{uuid: {name, sched, cpus}} of the pools the hypervisor has now (active pools); ``x``: a client
    of the server for the live view (default: a root session)."""
    if not on_sim(server):
        x = x or root_client(server)
        default = x.host.get_sched_policy(x.host.get_all()[0])
        return {rec["uuid"]: {"name": rec["name_label"], "sched": rec["sched_policy"] or default,
                              "cpus": {int(x.host_cpu.get_number(c)) for c in rec["host_CPUs"]}}
                for rec in x.cpu_pool.get_all_records().values() if rec["activated"]}
    state = sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))
    pools = {}
    for node in state[1:]:
        if isinstance(node, list) and node and node[0] == "cpupool":
            cpus = sxp.child_value(node, "cpus", "") or ""
            pools[sxp.child_value(node, "uuid")] = {
                "name": sxp.child_value(node, "name"), "sched": sxp.child_value(node, "sched"),
                "cpus": {int(c) for c in cpus.split(",") if c}}
    return pools


class PoolKit:
    """One client on one server, with the refs of its host, its pCPUs and Pool-0 at hand."""

    def __init__(self, server) -> None:
        self.server = server
        self.session = session(server)
        self.x = self.session.xenapi
        self.host = self.x.host.get_all()[0]
        self.cpu = {int(self.x.host_cpu.get_number(ref)): ref for ref in self.x.host_cpu.get_all()}
        self.pool0 = self.x.cpu_pool.get_by_name_label("Pool-0")[0]
        self.dom0 = next(vm for vm in self.x.VM.get_all() if self.x.VM.get_is_control_domain(vm))

    # -- making things ---------------------------------------------------------------------
    def pool(self, name: str | None = None, **fields) -> str:
        """cpu_pool.create; integers go as strings (Xen-API's wire form)."""
        record = {"name_label": name or unique("pool")}
        record.update({k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in fields.items()})
        return self.x.cpu_pool.create(record)

    def vm(self, name: str | None = None, **fields) -> str:
        return new_vm(self.x, name, **fields)

    def free(self, *numbers: int) -> None:
        """Take these pCPUs out of Pool-0: they become free for other pools."""
        for n in numbers:
            self.x.cpu_pool.remove_host_CPU_live(self.pool0, self.cpu[n])

    def active_pool(self, cpus: list[int], name: str | None = None, **fields) -> str:
        """A pool activated on exactly these pCPUs (taken from Pool-0 first)."""
        self.free(*cpus)
        pool = self.pool(name, ncpu=len(cpus), proposed_CPUs=[str(c) for c in cpus], **fields)
        self.x.cpu_pool.activate(pool)
        assert self.cpus_of(pool) == set(cpus)
        return pool

    # -- looking -----------------------------------------------------------------------------
    def numbers(self, host_cpu_refs) -> set[int]:
        return {int(self.x.host_cpu.get_number(ref)) for ref in host_cpu_refs}

    def cpus_of(self, pool: str) -> set[int]:
        return self.numbers(self.x.cpu_pool.get_host_CPUs(pool))

    def free_cpus(self) -> int:
        return int(self.x.host.get_free_cpus(self.host))

    def unassigned(self) -> set[int]:
        return self.numbers(self.x.host_cpu.get_unassigned_cpus())

    def owner(self) -> dict[int, list[str]]:
        """{pCPU number: host_cpu.cpu_pool}."""
        return {n: self.x.host_cpu.get_cpu_pool(ref) for n, ref in self.cpu.items()}

    def utilisation(self, vm: str) -> dict[int, float]:
        metrics = self.x.VM.get_metrics(vm)
        return {int(v): float(u) for v, u in self.x.VM_metrics.get_VCPUs_utilisation(metrics).items()}

    def vcpus_cpu(self, vm: str) -> dict[int, int]:
        metrics = self.x.VM.get_metrics(vm)
        return {int(v): int(c) for v, c in self.x.VM_metrics.get_VCPUs_CPU(metrics).items()}

    def everything(self) -> dict:
        """What a refused pool operation must leave alone: every pool record, who owns every pCPU,
        the free count, every VM's pool fields, and the simulated hypervisor's pools."""
        vms = {}
        for ref, rec in self.x.VM.get_all_records().items():
            vms[ref] = {k: rec[k] for k in ("power_state", "pool_name", "cpu_pool", "domid", "VCPUs_params")}
        return {
            "pools": self.x.cpu_pool.get_all_records(),
            "owners": self.owner(),
            "free": self.free_cpus(),
            "unassigned": self.unassigned(),
            "resident": sorted(self.x.host.get_resident_cpu_pools(self.host)),
            "vms": vms,
            "backend": backend_pools(self.server, self.x),
        }

    def refused(self, expected: list[str] | str, call, *args) -> list[str]:
        """Call must fail with ``expected`` (the whole ErrorDescription, or only its code) and change
        nothing at all."""
        before = self.everything()
        details = failure(call, *args)
        if isinstance(expected, str):
            assert details[0] == expected, details
        else:
            assert details == expected
        assert self.everything() == before
        return details

    def token(self, classes=("*",)) -> str:
        return event_from(self.x, list(classes), "", 0.0)["token"]

    def events(self, classes, token, timeout=2.0) -> list[dict]:
        return event_from(self.x, list(classes), token, timeout)["events"]
