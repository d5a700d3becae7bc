"""xend-ext: a Xen-API server with CPU pools, VM groups, scheduling domains and a policy manager."""

__version__ = "0.1.0"
