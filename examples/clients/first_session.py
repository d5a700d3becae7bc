#!/usr/bin/env python3
"""A first session with the official XenAPI client (PyPI package ``xenapi``).

    python3 first_session.py http://127.0.0.1:9363/        # over TCP
    python3 first_session.py ./var/state/xen-api.sock      # over the local Unix socket
"""

import sys

import XenAPI

target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9363/"
if target.startswith(("http://", "https://")):
    session = XenAPI.Session(target)
else:  # XenAPI.UDSTransport wants the socket path in the host part, with / written as _
    import os

    session = XenAPI.Session("http://" + os.path.abspath(target).replace("/", "_") + "/",
                             transport=XenAPI.UDSTransport())
session.xenapi.login_with_password("root", "", "1.0", "first-session-example")
try:
    host = session.xenapi.host.get_all()[0]
    record = session.xenapi.host.get_record(host)
    print(f"host {record['name_label']}: {len(record['host_CPUs'])} pCPUs, {record['free_cpus']} free, "
          f"{int(record['memory_total']) >> 20} MiB")
    session.xenapi.host.add_to_other_config(host, "example", "first-session")
    cpus = session.xenapi.host_cpu.get_all_records_where('field "number"="0"')
    print("pCPU 0:", next(iter(cpus.values()))["modelname"])
    token = getattr(session.xenapi.event, "from")(["host"], "", 1.0)["token"]
    session.xenapi.host.remove_from_other_config(host, "example")
    events = getattr(session.xenapi.event, "from")(["host"], token, 5.0)["events"]
    print("events:", [(e["class"], e["operation"]) for e in events])
finally:
    session.xenapi.session.logout()
