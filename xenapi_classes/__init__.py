"""One module per Xen-API class. Each declares its class; ``build_registry`` collects them."""

from __future__ import annotations

import importlib

from xend_ext.datamodel import Registry

# Order matters at start-up: hosts before pools, pools before VMs (pools activate before VMs start).
MODULES = (
    "system", "session", "event", "task", "host", "host_cpu", "pool",
    "cpu_pool", "sched_domain", "vm_metrics", "vm", "vm_group",
)


def build_registry() -> Registry:
    registry = Registry()
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.install(registry)
    return registry
