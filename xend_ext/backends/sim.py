"""The simulated host: a faithful model of a Xen host with N pCPUs, kept in its own state file.

Restarting xend-ext is a toolstack restart: the simulated hypervisor's runtime state outlives
the server in ``sim-host.sxp`` beside the store, just as domains outlive xend on a real host.
``reboot=True`` models a host reboot first. Domains, pools and the scheduler model arrive with
the VM and pool classes.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from .. import sxp
from .base import Backend, Capability, HostInfo, PhysicalCPU

MIB = 1 << 20
STATE_FILE = "sim-host.sxp"


class SimBackend(Backend):
    name = "sim"
    capabilities = frozenset({Capability.HOST, Capability.NUMA})

    def __init__(self, state_dir: str | Path, cpus: int = 8, memory_mib: int = 16384, numa_nodes: int = 1,
                 reboot: bool = False) -> None:
        if cpus < 1:
            raise ValueError("a simulated host needs at least one pCPU")
        if numa_nodes < 1 or numa_nodes > cpus:
            raise ValueError("NUMA nodes must be between 1 and the number of pCPUs")
        self.path = Path(state_dir) / STATE_FILE
        self.ncpus = cpus
        self.memory_total = memory_mib * MIB
        self.numa_nodes = numa_nodes
        self.boot_id = 0
        self._load(reboot)
        self._info = self._describe()

    def _load(self, reboot: bool) -> None:
        state = sxp.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else None
        previous = int(sxp.child_value(state, "boot", "0")) if state else 0
        # a new boot when the host never ran or was rebooted; otherwise the host kept running
        self.boot_id = previous + 1 if (state is None or reboot) else previous
        self._save()

    def _save(self) -> None:
        state = ["sim-host", ["boot", str(self.boot_id)], ["cpus", str(self.ncpus)]]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(sxp.dumps(state) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def host_info(self) -> HostInfo:
        return self._info

    def _describe(self) -> HostInfo:
        per_node = -(-self.ncpus // self.numa_nodes)
        cpus = tuple(
            PhysicalCPU(number=n, vendor="GenuineSim", modelname="Simulated CPU", speed_mhz=2400,
                        numa_node=n // per_node)
            for n in range(self.ncpus)
        )
        return HostInfo(
            hostname=socket.gethostname(),
            cpus=cpus,
            memory_total=self.memory_total,
            memory_free=self.memory_total,
            sched_policy="credit",
            software_version={
                "product_brand": "xend-ext",
                "xen": "simulated",
                "hostname": socket.gethostname(),
                "platform": platform.machine(),
            },
            cpu_configuration={"nr_cpus": str(self.ncpus), "nr_nodes": str(self.numa_nodes),
                               "cores_per_socket": str(self.ncpus), "threads_per_core": "1"},
        )
