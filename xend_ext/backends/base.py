"""The backend interface: every hypervisor action goes through one of these.

Small and uniform on purpose (like httpx's transports): the server asks for facts and actions,
a backend answers or says it cannot. A backend declares what it can do in ``capabilities``; the
dispatcher answers ``NOT_IMPLEMENTED [capability]`` for a message needing a missing one, before
anything changes. The VM part of the interface arrives with the VM classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class Capability:
    """Names of what a backend may be able to do (the NOT_IMPLEMENTED parameter)."""

    HOST = "host"
    NUMA = "numa"


@dataclass(frozen=True)
class PhysicalCPU:
    number: int
    vendor: str = ""
    modelname: str = ""
    speed_mhz: int = 0
    numa_node: int = 0


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpus: tuple[PhysicalCPU, ...]
    memory_total: int
    memory_free: int
    sched_policy: str = "credit"
    software_version: dict[str, str] = field(default_factory=dict)
    cpu_configuration: dict[str, str] = field(default_factory=dict)


class BackendError(Exception):
    """The hypervisor refused or failed an action; carries a sentence for the operator."""


class Backend(ABC):
    name: str = "?"
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    def host_info(self) -> HostInfo:
        """What the host is: CPUs, memory, scheduler, versions. Cheap enough to call per request."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release connections and files; the hypervisor's domains keep running."""
