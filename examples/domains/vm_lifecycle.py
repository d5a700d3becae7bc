#!/usr/bin/env python3
"""VMs through their whole life with the official XenAPI client (PyPI package ``xenapi``).

    python3 vm_lifecycle.py http://127.0.0.1:9363/        # over TCP
    python3 vm_lifecycle.py ./var/state/xen-api.sock      # over the local Unix socket

It defines two VMs from records, starts them, pins their vCPUs to one pCPU so that they compete,
and shows in VM_metrics how weight and cap share that pCPU out; then it suspends and resumes one,
shuts both down and removes them. Long operations run as Async tasks, watched with event.from.
Every VM it makes is removed again, even when a step fails.
"""

import os
import sys
import uuid

import XenAPI

MIB = 1 << 20


def connect(target):
    if target.startswith(("http://", "https://")):
        session = XenAPI.Session(target)
    else:  # XenAPI.UDSTransport wants the socket path in the host part, with / written as _
        session = XenAPI.Session("http://" + os.path.abspath(target).replace("/", "_") + "/",
                                 transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "", "1.0", "vm-lifecycle-example")
    return session


def wait(api, task):
    """Wait for an Async task with event.from (no polling delay); raise its error if it failed."""
    token = ""
    while True:
        answer = getattr(api.event, "from")(["task/" + task], token, 5.0)
        token = answer["token"]
        for event in answer["events"]:
            status = event.get("snapshot", {}).get("status")
            if status == "success":
                api.task.destroy(task)
                return
            if status in ("failure", "cancelled"):
                error = event["snapshot"]["error_info"]
                api.task.destroy(task)
                raise XenAPI.Failure(error)


def utilisation(api, vm):
    """The share of one pCPU the VM's vCPUs get together (the scheduler's answer, every vCPU busy)."""
    metrics = api.VM_metrics.get_record(api.VM.get_metrics(vm))
    return sum(float(v) for v in metrics["VCPUs_utilisation"].values())


def show(api, title, a, b):
    print(f"{title:<22} a {utilisation(api, a):.2f}  b {utilisation(api, b):.2f}")


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9363/"
    session = connect(target)
    api = session.xenapi
    suffix = uuid.uuid4().hex[:6]
    made = []
    try:
        # 1. define: the record is the stored next-start definition (ints travel as strings)
        a = api.VM.create({"name_label": f"example-a-{suffix}", "memory_target": str(512 * MIB),
                           "memory_static_max": str(1024 * MIB), "VCPUs_max": "2", "VCPUs_at_startup": "2"})
        made.append(a)
        b = api.VM.create({"name_label": f"example-b-{suffix}", "memory_target": str(256 * MIB),
                           "memory_static_max": str(256 * MIB), "VCPUs_max": "1", "VCPUs_at_startup": "1"})
        made.append(b)
        print("defined a (2 vCPUs, 512 MiB) and b (1 vCPU, 256 MiB):", api.VM.get_power_state(a))

        # 2. start, as tasks
        for vm in (a, b):
            wait(api, api.Async.VM.start(vm, False, False))
        print(f"started: a domid {api.VM.get_domid(a)}, b domid {api.VM.get_domid(b)}")

        # 3. pin every vCPU to the last pCPU, so that a and b compete for it
        cpu = str(len(api.host.get_host_CPUs(api.host.get_all()[0])) - 1)
        for vm, vcpus in ((a, 2), (b, 1)):
            for vcpu in range(vcpus):
                api.VM.pin_VCPU(vm, str(vcpu), cpu, "dynamic")
        show(api, f"pinned to pCPU {cpu}:", a, b)

        # 4. weight and cap: dynamic changes the running domain only, perm the definition too
        api.VM.set_sched_weight(a, "512", "dynamic")
        show(api, "a weight 512:", a, b)
        api.VM.set_sched_cap(a, "20", "perm")
        show(api, "a cap 20:", a, b)
        stored = api.VM.get_VCPUs_params(a)
        running = api.VM_metrics.get_VCPUs_params(api.VM.get_metrics(a))
        print(f"a weight: stored {stored.get('weight', '256')}, running {running['weight']}; "
              f"a cap: stored {stored['cap']}, running {running['cap']}")

        # 5. suspend and resume
        wait(api, api.Async.VM.suspend(a))
        print("a suspended:", api.VM.get_power_state(a))
        wait(api, api.Async.VM.resume(a, False, False))
        print("a resumed:", api.VM.get_power_state(a))

        # 6. shut down and remove
        for vm in (a, b):
            wait(api, api.Async.VM.clean_shutdown(vm))
        print("shut down:", api.VM.get_power_state(a), api.VM.get_power_state(b))
    finally:
        for vm in made:
            try:
                if api.VM.get_power_state(vm) != "Halted":
                    api.VM.hard_shutdown(vm)
                api.VM.destroy(vm)
            except XenAPI.Failure as exc:
                print("could not remove", vm, exc, file=sys.stderr)
        session.xenapi.session.logout()
    print("removed both VMs")


if __name__ == "__main__":
    main()
