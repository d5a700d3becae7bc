"""Host commands: ``xm info``."""

from __future__ import annotations

from .args import arg
from .sxpout import dumps_json

MIB = 1 << 20


def info(conn, args) -> int:
    """Show the host: CPUs, memory, versions, free CPUs, and what its backend can do."""
    host = conn.this_host()
    rec = conn.call("host.get_record", host)
    cfg = rec["cpu_configuration"]
    sw = rec["software_version"]
    rows = [
        ("host", rec["name_label"]),
        ("uuid", rec["uuid"]),
        ("nr_cpus", cfg.get("nr_cpus", str(len(rec["host_CPUs"])))),
        ("nr_nodes", cfg.get("nr_nodes", "1")),
        ("cores_per_socket", cfg.get("cores_per_socket", "")),
        ("threads_per_core", cfg.get("threads_per_core", "")),
        ("total_memory", str(int(rec["memory_total"]) // MIB)),
        ("free_memory", str(int(rec["memory_free"]) // MIB)),
        ("free_cpus", rec["free_cpus"]),
        ("xen_version", sw.get("xen", "")),
        ("xen_scheduler", rec["sched_policy"]),
        ("xen_api_version", f"{rec['API_version_major']}.{rec['API_version_minor']}"),
        ("capabilities", " ".join(rec.get("capabilities", []))),  # what the backend can do (host.capabilities)
        ("xend_ext_server", conn.url),
    ]
    if args.json:
        print(dumps_json(dict(rows)))
        return 0
    for key, value in rows:
        print(f"{key:<23}: {value}")
    return 0


COMMANDS = {"info": (info, [arg("--json", action="store_true", help="the same keys and values as JSON")])}
