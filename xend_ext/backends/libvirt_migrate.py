"""libvirt's own peer-to-peer live migration between two xend-ext servers' libvirt hosts (QEMU).

A server is told the libvirt URI under which other hosts' libvirtds reach its own
(``--libvirt-migrate-uri``) and, if need be, the address QEMU's migration stream should come to
(``--libvirt-migrate-address``: QEMU listens there only, and the sender connects to it; libvirt
chooses otherwise: qemu.conf's migration_host, else the host's name). Its backend then offers them
as its ``live_target``; the sending server's backend asks its own libvirtd to migrate the domain
there (``virDomainMigrateToURI3`` with PEER2PEER | LIVE | PERSIST_DEST | UNDEFINE_SOURCE): the
source libvirtd talks to the destination's itself, memory is pre-copied while the guest runs, and
the guest stops only for the last pass. Storage must be shared (libvirt refuses a migration it
deems unsafe for a disk); the real-KVM stage's guest boots from a kernel and has no disk.

Both hosts need libvirt's QEMU driver (its test driver has no migration; Xen's and LXC's are not
used here) and distinct host uuids. A failed or aborted (``abortJob``) migration leaves the domain
running at the source and nothing at the destination: libvirt's own recovery.
"""

from __future__ import annotations

import libvirt

KIND = "libvirt QEMU"  # the live_target kind: both servers must offer it
FLAGS = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def target(uri: str, address: str) -> dict[str, str]:
    """The live_target of a host whose libvirtd others reach at ``uri``."""
    return {"live_migration": KIND, "libvirt_migrate_uri": uri, "libvirt_migrate_address": address}


def send(dom, to: dict[str, str]) -> None:
    """Migrate ``dom`` live to the libvirtd of the live_target ``to`` (blocking until it is over)."""
    params = {}
    if to.get("libvirt_migrate_address"):
        address = to["libvirt_migrate_address"]
        params[libvirt.VIR_MIGRATE_PARAM_URI] = "tcp://" + (f"[{address}]" if ":" in address else address)
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = address
    dom.migrateToURI3(to["libvirt_migrate_uri"], params, FLAGS)


def fetch(uuid: str, there: dict[str, str], here: dict[str, str]) -> None:
    """Bring domain ``uuid`` back live from the host of ``there`` to the one of ``here``."""
    conn = libvirt.open(there["libvirt_migrate_uri"])
    try:
        send(conn.lookupByUUIDString(uuid), here)
    finally:
        conn.close()


def figures(dom) -> dict[str, str]:
    """What libvirt measured of the migration that brought ``dom`` here (its completed job, kept
    at the destination, and kept there for virsh domjobinfo --completed): the downtime, in seconds
    ({} when libvirt has none)."""
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
    except libvirt.libvirtError:
        return {}
    return {"downtime": f"{int(stats['downtime']) / 1000:.3f}"} if "downtime" in stats else {}
