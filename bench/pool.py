"""Durable mutations per second through etcd (a pool, ``serve --cluster``) beside the embedded store.

    .venv/bin/python -m bench.pool                      # 16 clients, 5 s per cell
    .venv/bin/python -m bench.pool --clients 1,16 --seconds 3

Both cells run the sweep's ``durable-write`` phase (``host.add_to_other_config``, a fresh key per
call, acknowledged once durable) with the load generator of bench/loadgen.py against one server:
the server alone on its journal (fsync, group commit), then one host of a pool of three etcd
members (Debian's etcd 3.4, tests/etcdkit.py) and three servers on loopback (etcd transaction,
group commit; the other two hosts apply every change from their watch meanwhile). Then the
cost of forwarding (xend_ext/forward.py): the same durable write (``VM.add_to_other_config``)
through host 0, on a fresh VM running on host 0 and on one running on host 1 (which host 0 hands
to host 1), with one simple threaded client loop for both. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import XenAPI

from bench.httpclient import Endpoint
from bench.loadgen import DURABLE_WRITE, CellSpec, measure
from bench.servers import HOST, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcdkit import EtcdCluster  # noqa: E402 - the test kit's etcd cluster


def _server(workdir: Path, name: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(workdir / name), "--unix", "none",
         "--listen", f"{HOST}:{port}", *extra], stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{name}.log", "wb"))  # noqa: SIM115 - the child keeps it
    return proc, port


def _cell(port: int, clients: int, seconds: float, tag: str) -> str:
    endpoint = Endpoint(HOST, port, keep_alive=True)
    deadline = time.monotonic() + 30
    while True:  # until the server answers
        try:
            XenAPI.Session(f"http://{HOST}:{port}/").xenapi.login_with_password("root", "")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    out = measure(CellSpec(DURABLE_WRITE, clients, seconds, 0.5, endpoint, tag), lambda _: None)
    if out.error:
        return f"error: {out.error}"
    return (f"{out.calls / out.elapsed:8.0f} calls/s  p50 {out.p50_ms:6.2f} ms  p99 {out.p99_ms:6.2f} ms"
            f"  failures {out.failures}")


def _writes(url: str, vm: str, clients: int, seconds: float) -> str:
    """``VM.add_to_other_config`` of ``vm`` through the server at ``url``, ``clients`` threads."""
    times: list[float] = []
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        x = XenAPI.Session(url).xenapi
        x.login_with_password("root", "")
        n = 0
        while time.monotonic() < stop:
            began = time.perf_counter()
            x.VM.add_to_other_config(vm, f"fwd-{i}-{n}-{time.monotonic_ns()}", "1")
            times.append(time.perf_counter() - began)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"{len(times) / seconds:8.0f} calls/s  p50 {statistics.median(times) * 1000:6.2f} ms"


def _forwarding(ports: list[int], counts: list[int], seconds: float) -> None:
    url = f"http://{HOST}:{ports[0]}/"
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", "")
    x = session.xenapi
    own = x.session.get_this_host(session._session)
    other = next(h for h in x.host.get_all() if h != own and x.host.get_address(h))

    def running_on(host: str) -> str:
        vm = x.VM.create({"name_label": f"bench-fwd-{time.monotonic_ns()}", "memory_target": str(64 << 20),
                          "memory_static_max": str(64 << 20)})
        x.VM.start_on(vm, host, False, False)
        return vm

    for n in counts:
        for what, host in (("a VM on host 0", own), ("a VM on host 1 (forwarded)", other)):
            print(f"through host 0, {what}, {n:2d} clients: {_writes(url, running_on(host), n, seconds)}",
                  flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="16", help="comma-separated client counts (16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per cell (5)")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        root = Path(tmp)
        procs = []
        try:
            alone, port = _server(root, "alone")
            procs.append(alone)
            for n in counts:
                print(f"embedded store, {n:2d} clients: {_cell(port, n, args.seconds, f'a{n}')}", flush=True)
            alone.terminate()
            etcd = EtcdCluster(root / "etcd").start()
            try:
                hosts = [_server(root, f"host{i}", "--cluster", etcd.endpoints) for i in range(3)]
                procs += [p for p, _ in hosts]
                for n in counts:
                    print(f"pool on etcd,   {n:2d} clients: {_cell(hosts[0][1], n, args.seconds, f'p{n}')}",
                          flush=True)
                _forwarding([port for _, port in hosts], counts, args.seconds)
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)
                etcd.stop()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
