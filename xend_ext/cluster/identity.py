"""Host-local identities made unique in a pool.

Every Xen host calls its control domain ``00000000-0000-0000-0000-000000000000`` and its boot
CPU pool by one well-known uuid (``POOL0_UUID``): alone that is fine, in a pool three hosts would
share one Domain-0 and one Pool-0 record. :class:`HostIdentities` stands between the server and
its backend and renames those two uuids to ones of this host (a uuid5 of the host's uuid and the
well-known one, so the same at every start): the backend keeps its own names, the model sees
names no other host has. Only exact matches are renamed, in arguments going in and results
coming out (domains, pools, configs, images' metadata, the uuids a change reports).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid as uuid_module
from typing import Any

from ..backends.base import POOL0_UUID

#: Backend attributes read as they are (no uuid in them, or read for every host record).
PLAIN = frozenset({"host_info", "memory_free", "close", "missing", "image_extra", "take_image",
                   "drop_image", "capabilities", "schedulers", "name", "migration"})


class HostIdentities:
    def __init__(self, backend: Any, host_uuid: str) -> None:
        self.backend = backend
        shared = {POOL0_UUID, *(d.uuid for d in backend.domains() if d.is_control_domain)}
        space = uuid_module.UUID(host_uuid)
        self.outward = {u: str(uuid_module.uuid5(space, u)) for u in shared}
        self.inward = {mine: theirs for theirs, mine in self.outward.items()}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.backend, name)
        if name in PLAIN or not callable(value):
            return value

        @functools.wraps(value)  # keeps __name__: the dispatcher tells reads from actions by it
        def call(*args: Any) -> Any:
            return _rename(value(*_rename(args, self.inward)), self.outward)

        return call

    def watch(self, notify) -> None:
        self.backend.watch(lambda kind, ident: notify(kind, self.outward.get(ident, ident)))


def _rename(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every string that is a key of ``names`` replaced, through containers and
    dataclasses (frozen ones copied)."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_rename(v, names) for v in value)
    if isinstance(value, dict):
        return {_rename(k, names): _rename(v, names) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _rename(getattr(value, f.name), names) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value
