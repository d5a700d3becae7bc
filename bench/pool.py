"""Durable mutations per second through etcd (a pool, ``serve --cluster``) beside the embedded store.

    .venv/bin/python -m bench.pool                      # 16 clients, 5 s per cell
    .venv/bin/python -m bench.pool --clients 1,16 --seconds 3

Both cells run the sweep's ``durable-write`` phase (``host.add_to_other_config``, a fresh key per
call, acknowledged once durable) with the load generator of bench/loadgen.py against one server:
the server alone on its journal (fsync, group commit), then one host of a pool of three etcd
members (Debian's etcd 3.4, tests/etcdkit.py) and three servers on loopback (etcd transaction,
group commit; the other two hosts apply every change from their watch meanwhile). Prints the
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
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
