"""What a pool on etcd costs and how far it scales: ``python -m bench.poolscale``.

    .venv/bin/python -m bench.poolscale                   # 0, 1k, 10k, 50k, 100k VMs; 1, 3, 5 hosts (5 min)
    .venv/bin/python -m bench.poolscale --sizes 1000 --hosts 1,3 --seconds 3

**Objects.** For each size N, a fresh pool of three etcd members on loopback (tests/etcdkit.py)
is filled with N halted VMs (each with its VM_metrics) by a server of the pool run in this
process: its own model defines them as ``VM.create`` does (bench/statedir.py) and its own store
(xend_ext/cluster/store.py) writes them, a commit every 2,000 VMs, in transactions of 100 keys,
so the records are exactly what a server writes (not through XML-RPC: 50,000 calls would take
minutes). That server stops; then a new server joins the pool and is measured: the time from its
process start to its first answered login (its start reads the whole prefix in one range), its
RSS, each member's db size (``etcdctl endpoint status``) and the bytes per VM above the empty
pool's, and the durable write rate at 16 clients through it (bench/loadgen.py's durable-write
phase, ``host.add_to_other_config``). Beside each, in turn, the embedded store on N VMs (a state
bench/statebuild.py built: N VMs, no journal records): the same start, RSS and writes.

**Hosts.** A fresh pool, no VMs: the same durable writes through host 0 with 1, then 3, then 5
servers joined (every server applies every change from its watch).

Before each write cell the host's ``other_config`` is emptied, as the phase adds a key per call
and a pool's write puts the whole record. Prints the figures and the load average; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import XenAPI

from bench import servers, statebuild
from bench.httpclient import Endpoint
from bench.loadgen import DURABLE_WRITE, CellSpec, measure
from bench.scale import CACHE, SMALL_CALL_CPUS
from bench.statedir import define_vms
from xend_ext.server import Config, Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcdkit import EtcdCluster  # noqa: E402 - the test kit's etcd cluster

FILL_BATCH = 2000  # VMs defined per commit while filling the pool


async def _fill(endpoints: str, state_dir: Path, vms: int) -> float:
    """Define ``vms`` VMs in a pool through a server of it run here; the seconds it took."""
    began = time.perf_counter()
    server = Server(Config(state_dir=state_dir, listen=[], unix=None, cluster=endpoints))
    await server.start()
    try:
        for start in range(0, vms, FILL_BATCH):
            define_vms(server, range(min(FILL_BATCH, vms - start)))
            await server.services.commit(server.db.last_seq)
    finally:
        await server.stop()
    return time.perf_counter() - began


def _db_sizes(etcd: EtcdCluster) -> list[int]:
    """Each member's db size on disk (bytes), as ``etcdctl endpoint status`` says."""
    found = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json").stdout)
    return [member["Status"]["dbSize"] for member in found]


def _vm_keys(etcd: EtcdCluster) -> int:
    """How many VM records the pool holds in etcd (the default prefix): a range reply counts them all."""
    found = json.loads(etcd.etcdctl("get", "--prefix", "/xend-ext/o/VM/", "--limit", "1", "-w", "json").stdout)
    return found.get("count", 0)


def _writes(server: servers.ServerProcess, clients: int, seconds: float, tag: str) -> str:
    """Durable writes at ``clients`` clients through ``server``: calls/s and p50, on an emptied host record."""
    x = XenAPI.Session(f"http://{servers.HOST}:{server.port}/")
    x.xenapi.login_with_password("root", "")
    x.xenapi.host.set_other_config(x.xenapi.session.get_this_host(x._session), {})
    endpoint = Endpoint(servers.HOST, server.port, keep_alive=True)
    out = measure(CellSpec(DURABLE_WRITE, clients, seconds, 0.5, endpoint, tag), lambda _: None)
    if out.error:
        return f"error: {out.error}"
    failed = f", {out.failures} failed" if out.failures else ""
    return f"{out.calls / out.elapsed:.0f} (p50 {out.p50_ms:.1f} ms{failed})"


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _start(state: Path | None = None, cluster: str | None = None, timeout: float = 300) -> servers.ServerProcess:
    extra = ("--cluster", cluster) if cluster else ()
    return servers.start(servers.XEND_EXT, SMALL_CALL_CPUS, state, timeout=timeout, login=True, extra=extra)


def objects(sizes: list[int], clients: int, seconds: float, root: Path) -> None:
    print(f"| VMs | store | fill (s), VM keys in etcd | start → login (s) | RSS (MB) | etcd db per member (MB) "
          f"| bytes per VM | durable writes/s at {clients} clients | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    empty = None
    for vms in sizes:
        state = statebuild.cached_state_dir(CACHE, vms, 0)[0] if vms else None
        with _start(state) as alone:
            print(f"| {vms:,} | embedded | — | {alone.ready_s:.2f} | {alone.rss_bytes() / 2**20:.0f} | — | — "
                  f"| {_writes(alone, clients, seconds, f'e{vms}')} | {_load()} |", flush=True)
        etcd = EtcdCluster(root / f"etcd-{vms}").start()
        try:
            if empty is None:  # the db of a pool of one host, no VM: what a VM adds is above it
                asyncio.run(_fill(etcd.endpoints, root / f"fill-{vms}", 0))
                empty = max(_db_sizes(etcd))
            fill = asyncio.run(_fill(etcd.endpoints, root / f"fill-{vms}", vms))
            db = _db_sizes(etcd)
            per_vm = f"{(max(db) - empty) / vms:,.0f}" if vms else "—"
            with _start(cluster=etcd.endpoints) as member:
                print(f"| {vms:,} | pool | {fill:.1f}, {_vm_keys(etcd):,} | {member.ready_s:.2f} "
                      f"| {member.rss_bytes() / 2**20:.0f} | {' / '.join(f'{d / 2**20:.1f}' for d in db)} | {per_vm} "
                      f"| {_writes(member, clients, seconds, f'p{vms}')} | {_load()} |", flush=True)
        finally:
            etcd.stop()


def hosts(counts: list[int], clients: int, seconds: float, root: Path) -> None:
    print(f"\n| hosts joined | durable writes/s at {clients} clients through host 0 | load (1 min) |")
    print("|---|---|---|")
    etcd = EtcdCluster(root / "etcd-hosts").start()
    joined: list[servers.ServerProcess] = []
    try:
        for count in counts:
            while len(joined) < count:
                joined.append(_start(cluster=etcd.endpoints))
            print(f"| {count} | {_writes(joined[0], clients, seconds, f'h{count}')} | {_load()} |", flush=True)
    finally:
        for server in joined:
            server.stop()
        etcd.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poolscale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,10000,50000,100000",
                        help="VM counts (0,1000,10000,50000,100000)")
    parser.add_argument("--hosts", default="1,3,5", help="servers joined, in turn (1,3,5); empty: skip")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients per write cell (16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per write cell (5)")
    args = parser.parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)\n")
    with tempfile.TemporaryDirectory(prefix="bench-poolscale-") as tmp:
        if args.sizes:
            objects([int(n) for n in args.sizes.split(",")], args.clients, args.seconds, Path(tmp))
        if args.hosts:
            hosts([int(n) for n in args.hosts.split(",")], args.clients, args.seconds, Path(tmp))
    print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
