"""Scheduling domains on a Linux host as libvirt resource partitions (cgroup v1's cpu controller).

A scheduling domain is one cgroup, the partition ``/machine/xend-sdom-<master uuid>``, holding the
cgroups of its master's and members' domains (``<resource><partition>`` in their XML, which
libvirt reads when a domain starts). Without systemd libvirt names its directory
``machine/xend-sdom-<uuid>.partition`` in every cgroup hierarchy it uses and creates only
``/machine`` itself: the partition must exist, in each hierarchy, before a domain starts in it.
The master's cap is the partition's CFS quota (``cpu.cfs_quota_us`` per ``cpu.cfs_period_us`` of
100 ms: cap % of one pCPU) and its weight the partition's ``cpu.shares`` (4 × weight, the scale of
the domains' own ``cpu_shares``), so the kernel limits and weighs the set as one entity.

libvirt has no API for partitions ("left as an exercise for the administrator"): they are
written here, which needs root on the host that runs libvirtd (this process must be on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .base import BackendError

PERIOD = 100_000  # µs
SHARES_PER_WEIGHT = 4  # cpu.shares = 4 × weight: weight 256 is the kernel's default 1024
DEFAULT = "/machine"  # libvirt's own partition, which it creates itself


def partition(master: str) -> str:
    """The partition of the scheduling domain whose master is the domain ``master`` (uuid)."""
    return f"{DEFAULT}/xend-sdom-{master}"


@dataclass(frozen=True)
class Partitions:
    """The cgroup hierarchies a partition is made in, and the one with the cpu controller."""

    hierarchies: tuple[Path, ...]
    cpu: Path

    @classmethod
    def probe(cls, mounts: str) -> tuple[Partitions | None, str]:
        """From /proc/self/mounts: the partitions this host allows, or None and the reason."""
        v1: list[tuple[Path, set[str]]] = []
        v2: list[Path] = []
        for line in mounts.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "cgroup":
                v1.append((Path(fields[1]), set(fields[3].split(","))))
            elif len(fields) >= 4 and fields[2] == "cgroup2":
                v2.append(Path(fields[1]))
        cpu = next((path for path, options in v1 if "cpu" in options), None)
        if cpu is None:
            return None, ("no cgroup v1 cpu controller is mounted (scheduling domains are built on cgroup v1's "
                          "cpu.cfs_quota_us and cpu.shares; cgroup v2 is not supported yet)")
        if os.geteuid() != 0 or not os.access(cpu, os.W_OK):
            return None, f"creating cgroups under {cpu} needs root on the libvirt host"
        # every hierarchy with a controller libvirt may use, and the unified one (named ones: never)
        hierarchies = [path for path, options in v1 if not any(o.startswith("name=") for o in options)]
        return cls(tuple(hierarchies + v2), cpu), ""

    def _dirs(self, master: str) -> list[Path]:
        return [_dir(root, master) for root in self.hierarchies]

    def ensure(self, master: str, weight: int, cap: int) -> None:
        """Make the partition (where missing) and set its weight and cap."""
        try:
            for path in self._dirs(master):
                for d in (path.parent, path):
                    if not d.is_dir():
                        d.mkdir()
                        for name in ("cpuset.cpus", "cpuset.mems"):  # cpuset: a new group has none
                            if (d / name).exists():
                                (d / name).write_text((d.parent / name).read_text())
            cpu = _dir(self.cpu, master)
            (cpu / "cpu.cfs_period_us").write_text(str(PERIOD))
            (cpu / "cpu.cfs_quota_us").write_text(str(cap * PERIOD // 100 if cap else -1))
            (cpu / "cpu.shares").write_text(str(max(2, weight * SHARES_PER_WEIGHT)))
        except OSError as exc:
            raise BackendError(f"cannot set up the cgroup partition {partition(master)}: {exc}", "BACKEND_ERROR",
                               f"cgroup partition {partition(master)}: {exc.strerror}") from None

    def remove(self, master: str) -> None:
        """Remove the partition of a dissolved domain (none of its domains runs any more)."""
        for path in self._dirs(master):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError(f"cannot remove the cgroup partition {path}: {exc}", "BACKEND_ERROR",
                                   f"cgroup partition {partition(master)}: {exc.strerror}") from None


def _dir(root: Path, master: str) -> Path:
    """A partition's directory in one hierarchy, as libvirt names it without systemd."""
    return root / DEFAULT.lstrip("/") / f"{partition(master).rsplit('/', 1)[1]}.partition"
