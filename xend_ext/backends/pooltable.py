"""CPU pools as a table of disjoint pCPU sets, for backends that keep pools themselves.

The simulated host and libvirt (which emulates pools by pinning) share these rules, with the
errors Xen's cpupools give: a pCPU belongs to at most one pool, Pool-0 cannot go, a pool in use
keeps its last pCPU. The caller holds its own lock, persists the table and applies the result.
"""

from __future__ import annotations

from dataclasses import replace

from .. import sxp
from .base import POOL0_UUID, BackendError, CpuPool

SCHEDULERS = ("credit", "credit2")  # what the scheduler model (and Xen 4.17) has: no sedf


class PoolTable:
    def __init__(self, ncpus: int) -> None:
        self.ncpus = ncpus
        self.pools: dict[str, CpuPool] = {}
        self.next_poolid = 1

    def boot(self, sched: str = "credit") -> None:
        """A host that has no pools yet (it just booted): every pCPU in Pool-0."""
        if POOL0_UUID not in self.pools:
            self.pools = {POOL0_UUID: CpuPool(POOL0_UUID, "Pool-0", 0, sched, frozenset(range(self.ncpus)))}

    def active(self) -> list[CpuPool]:
        return sorted(self.pools.values(), key=lambda p: p.poolid)

    def get(self, uuid: str) -> CpuPool:
        pool = self.pools.get(uuid)
        if pool is None:
            raise BackendError("the CPU pool is not active", "POOL_BAD_STATE", "deactivated")
        return pool

    def owner(self, cpu: int) -> CpuPool | None:
        return next((p for p in self.pools.values() if cpu in p.cpus), None)

    def activate(self, uuid: str, name: str, sched: str, cpus: frozenset[int]) -> CpuPool:
        if uuid in self.pools:
            raise BackendError("the pool is already active", "POOL_BAD_STATE", "activated")
        if sched not in SCHEDULERS:
            raise BackendError(f"unknown scheduler {sched}", "UNKOWN_SCHED_POLICY")
        for cpu in sorted(cpus):
            owner = self.owner(cpu)
            if not 0 <= cpu < self.ncpus or owner is not None:
                raise BackendError(f"pCPU {cpu} is not free", "INVALID_CPU",
                                   f'cpu already assigned to pool "{owner.name}"' if owner else f"no pCPU {cpu}")
        pool = self.pools[uuid] = CpuPool(uuid, name, self.next_poolid, sched, frozenset(cpus))
        self.next_poolid += 1
        return pool

    def deactivate(self, uuid: str, in_use: bool) -> None:
        if self.get(uuid).poolid == 0:
            raise BackendError("the boot pool cannot be destroyed", "OPERATION_NOT_ALLOWED",
                               "Pool-0 cannot be deactivated")
        if in_use:
            raise BackendError("domains run in the pool", "POOL_BAD_STATE", "in use")
        del self.pools[uuid]

    def add_cpu(self, uuid: str, cpu: int) -> CpuPool:
        pool = self.get(uuid)
        if not 0 <= cpu < self.ncpus:
            raise BackendError(f"no pCPU {cpu}", "INVALID_CPU", f"no pCPU {cpu} on this host")
        owner = self.owner(cpu)
        if owner is not None:
            raise BackendError("pCPU in a pool", "INVALID_CPU", f'cpu already assigned to pool "{owner.name}"')
        pool = self.pools[uuid] = replace(pool, cpus=pool.cpus | {cpu})
        return pool

    def remove_cpu(self, uuid: str, cpu: int, in_use: bool) -> CpuPool:
        pool = self.get(uuid)
        if cpu not in pool.cpus:
            raise BackendError("pCPU not in the pool", "INVALID_CPU", "CPU not assigned to pool")
        if pool.cpus == {cpu} and in_use:
            raise BackendError("last pCPU of a pool in use", "LAST_CPU_NOT_REMOVEABLE", "could not remove last cpu")
        pool = self.pools[uuid] = replace(pool, cpus=pool.cpus - {cpu})
        return pool

    # -- persistence, as children of the backend's own SXP state ------------------------------------
    def to_sxp(self) -> list[list]:
        return [["next_poolid", str(self.next_poolid)],
                *[["cpupool", ["uuid", p.uuid], ["name", p.name], ["poolid", str(p.poolid)], ["sched", p.sched],
                   ["cpus", ",".join(str(c) for c in sorted(p.cpus))]] for p in self.pools.values()]]

    def load_sxp(self, state: list) -> None:
        self.next_poolid = int(sxp.child_value(state, "next_poolid", "1"))
        for child in state[1:]:
            if isinstance(child, list) and child and child[0] == "cpupool":
                cpus = sxp.child_value(child, "cpus", "") or ""
                pool = CpuPool(uuid=sxp.child_value(child, "uuid"), name=sxp.child_value(child, "name"),
                               poolid=int(sxp.child_value(child, "poolid")), sched=sxp.child_value(child, "sched"),
                               cpus=frozenset(int(c) for c in cpus.split(",") if c and int(c) < self.ncpus))
                self.pools[pool.uuid] = pool
