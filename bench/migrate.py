"""Migration of one large image between two xend-ext servers on loopback: time, rate and memory.

    .venv/bin/python -m bench.migrate --mib 512          # a 512 MiB guest, its image as large

Both servers run the simulated host with images as large as the guest (``--sim-image-bytes``) and
``--max-body 1 MiB``; the VM moves with ``Async.VM.migrate`` while each server's VmRSS is sampled
every 20 ms. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import XenAPI

from bench.servers import HOST, free_port


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def _server(workdir: Path, name: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xend_ext", "serve", "--state-dir", str(workdir / name), "--unix", "none",
         "--listen", f"{HOST}:{port}", "--max-body", str(1 << 20), "--sim-image-bytes", str(1 << 20),
         "--memory", "32768", "--image-dir", str(workdir / f"{name}-images")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            session = XenAPI.Session(url)
            session.xenapi.login_with_password("root", "")
            return proc, url, session.xenapi
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="the guest's memory, and so its image (MiB)")
    parser.add_argument("--live", action="store_true", help="VM.migrate live (the sim exports while it runs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        (src, _, x), (dst, dst_url, _) = _server(Path(tmp), "source"), _server(Path(tmp), "destination")
        try:
            memory = str(args.mib << 20)
            vm = x.VM.create({"name_label": "big", "memory_target": memory, "memory_static_max": memory})
            x.VM.start(vm, False, False)
            before = {p.pid: _rss_mib(p.pid) for p in (src, dst)}
            peak = dict(before)
            began = time.monotonic()
            task = x.Async.VM.migrate(vm, dst_url, args.live)
            while x.task.get_status(task) == "pending":
                for pid in peak:
                    peak[pid] = max(peak[pid], _rss_mib(pid))
                time.sleep(0.02)
            took = time.monotonic() - began
            record = x.task.get_record(task)
            size = int(record["other_config"].get("migration_size", "0"))
            print(f"status {record['status']} {record['error_info'] or ''}")
            print(f"image {size / (1 << 20):.0f} MiB in {took:.2f} s ({size / (1 << 20) / took:.0f} MiB/s, "
                  "export + stream + restore)")
            for name, proc in (("source", src), ("destination", dst)):
                print(f"{name} RSS {before[proc.pid]} MiB, peak {peak[proc.pid]} MiB during the migration")
        finally:
            for proc in (src, dst):
                proc.terminate()
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
