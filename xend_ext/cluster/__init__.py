"""A pool of hosts on etcd v3 (``xend-ext serve --cluster <endpoints>``).

The model stays the truth each server answers from; what changes is where its records go. In a
pool the journal is etcd: :class:`~xend_ext.cluster.store.ClusterStore` takes the model's ops as
the embedded :class:`~xend_ext.store.Store` does (``append``, ``durable``, the rollback hook) and
makes them durable as one etcd transaction per batch, each touched object compared by its mod
revision, so a change made meanwhile by another host refuses the batch instead of being
overwritten. Every server watches the pool's prefix and applies the others' changes to its model,
which announces them to its event hub: ``event.from`` on any host sees every change of the pool.

Keys under the prefix (``/xend-ext/`` unless ``--cluster-prefix``)::

    o/<class>/<ref>   one persistent object: its stored fields, encoded as the journal has them (JSON)
    w/<writer>        the id of the last batch a server wrote (an unknown outcome is looked up here)
    l/<host uuid>     empty, on the host's lease: the host is live while it exists (liveness.py, ha.py)
    secret            the pool's secret: servers open sessions to each other with it (xend_ext.forward)
"""

from __future__ import annotations

from .store import ClusterStore, parse_endpoints

__all__ = ["ClusterStore", "parse_endpoints"]
