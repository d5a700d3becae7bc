"""Commands for a pool of hosts on etcd (``serve --cluster``): ``xm host-list`` and HA on/off.

Their names are xe's (``xe host-list``, ``xe pool-ha-enable``): xend had no pool of hosts, and its
``pool-*`` commands are the CPU pools' old names. Any host of the pool answers them.
"""

from __future__ import annotations

from .args import arg
from .client import Client
from .sxpout import dumps_json

MIB = 1 << 20
LIST_ROW = "%-20s %-36s %-30s %-4s %5s %8s"
LIST_HEADER = LIST_ROW % ("Name", "UUID", "Address", "Live", "VMs", "Free(M)")


def list_hosts(client: Client, args) -> int:
    """List the hosts of the pool: name, uuid, the address the others reach it at, whether it
    is live (holds its etcd lease), how many VMs reside there (running, paused, or unknown while
    it is not live; Domain-0 not counted) and its free memory (MiB).

    A host that is not live stopped renewing its lease (its server was stopped, killed, frozen or
    cut from etcd); its VMs show the state ``Unknown`` (``??????`` in xm list) until it returns,
    or, with ``xm pool-ha-enable``, its auto_power_on VMs are restarted on another host.
    """
    hosts = sorted(client.call("host.get_all_records").items(), key=lambda pair: pair[1]["name_label"])
    vms = client.call("VM.get_all_records") if hosts else {}
    resident = {ref: 0 for ref, _rec in hosts}
    for rec in vms.values():
        if not rec["is_control_domain"] and rec["resident_on"] in resident:
            resident[rec["resident_on"]] += 1
    if args.json:
        print(dumps_json([{**rec, "ref": ref, "resident_VM_count": resident[ref]} for ref, rec in hosts]))
        return 0
    print(LIST_HEADER)
    for ref, rec in hosts:
        live = rec.get("live", True)
        free = int(rec["memory_free"]) // MIB if live else "-"
        print(LIST_ROW % (rec["name_label"], rec["uuid"], rec.get("address", "") or "-", "y" if live else "n",
                          resident[ref], free))
    return 0


def _ha(client: Client, enabled: bool) -> int:
    pool = client.call("pool.get_all")[0]
    client.call("pool.set_ha_enabled", pool, enabled)
    return 0


def ha_enable(client: Client, args) -> int:
    """Restart the auto_power_on VMs of a host that is no longer live on another live host.

    Sets pool.ha_enabled. A VM is restarted once in the pool, by the first host whose claim (an
    etcd transaction) succeeds, and only after the lost host's lease expired. The lost host must
    then truly not run it: fence it (a watchdog, or power it off) if it may still run guests
    without its server; when its server returns it stops its copies of VMs that now run elsewhere.
    """
    return _ha(client, True)


def ha_disable(client: Client, args) -> int:
    """Leave the VMs of a host that is not live alone: they show the state Unknown until it returns."""
    return _ha(client, False)


COMMANDS = {
    "host-list": (list_hosts, [arg("--json", action="store_true", help="the hosts' records as JSON, with "
                                   "resident_VM_count")]),
    "pool-ha-enable": (ha_enable, []),
    "pool-ha-disable": (ha_disable, []),
}
