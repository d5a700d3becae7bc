"""Build a large state directory fast: ``python -m bench.statedir --vms N --journal M DIR``.

The objects are made by the server's own model and store, in this process, without HTTP: the
project's server starts on DIR (sim backend, no listener), ``N`` halted VMs (each with its
VM_metrics, as ``VM.create`` makes them) are added to the model and written as one snapshot,
then ``M`` journal records (record ``k`` sets the ``name_description`` of VM ``k mod N`` to
``revision k``, so names stay ``vm-<i>``) are written and fsync'd in groups, and the server
stops without a final snapshot, so the next start has N VMs to load and M records to replay.
100,000 VMs + 100,000 records take about a minute on the 2-core machine.  Beside the snapshot,
``reference-state.xml`` holds the same objects in the per-object XML of format 2 (the layout
``bench/reference_server.py`` reads, as xend read its state files).

The VMs are defined the way ``VM.create`` defines them (typed values, the class's create
hooks); the per-field checks of the message (unique names) are skipped because the names are
unique by construction, which keeps the build linear.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from xend_ext.dispatch import Context
from xend_ext.server import Config, Server
from xend_ext.store import snapshot
from xend_ext.store.schema import FORMAT_V2, normalize

BATCH = 2000  # records per group commit while writing the journal
EXPORT_NAME = "reference-state.xml"  # the snapshot's objects in format 2, for the reference server


def vm_name(index: int) -> str:
    """The name_label of the index-th generated VM (the bench looks for ``vm-42``)."""
    return f"vm-{index}"


def vm_values(i: int) -> dict:
    return {
        "name_label": vm_name(i),
        "name_description": f"generated VM {i}",
        "memory_static_max": str(256 << 20),
        "memory_target": str(256 << 20),
        "VCPUs_max": "2",
        "VCPUs_at_startup": "1",
        "PV_kernel": "/boot/vmlinuz-guest",
        "other_config": {"made-by": "bench.statedir"},
    }


def typed(cls, record: dict, db) -> dict:
    """The create values of ``record`` as VM.create types them (defaults for the rest)."""
    values = {f.name: f.make_default() for f in cls.fields.values() if f.in_constructor}
    values.update({key: cls.fields[key].type.coerce(raw, db, key) for key, raw in record.items()})
    return values


def define_vms(server: Server, indexes: range) -> list:
    """Define halted VMs in ``server``'s model as ``VM.create`` would, numbered after the VMs
    already there (control domains aside): ``vm-<first + i>`` for each i of ``indexes``."""
    db, vm_class = server.db, server.registry.classes["VM"]
    ctx = Context(server.services, "bench.statedir")
    first = sum(1 for vm in db.values("VM") if not vm.values["is_control_domain"])
    made = []
    for i in indexes:
        values = typed(vm_class, vm_values(first + i), db)
        vm_class.on_create(ctx, values)
        made.append(db.create("VM", values))
        vm_class.after_create(ctx, made[-1])
    return made


async def build(state_dir: Path, vms: int, records: int) -> dict[str, float]:
    """Add ``vms`` VMs and then ``records`` journal records to the state in ``state_dir``;
    returns the seconds taken and the bytes of the snapshot and of the journal."""
    began = time.perf_counter()
    config = Config(state_dir=state_dir, listen=[], unix=None, compact_min_bytes=1 << 62)
    server = Server(config)
    await server.start()
    db, store = server.db, server.store
    db.store = None  # the snapshot below holds them all: no journal record per object
    try:
        made = define_vms(server, range(vms))
    finally:
        db.store = store
    await store.compact()
    pending, seq = db.capture()
    description = server.registry.description()
    (state_dir / EXPORT_NAME).write_bytes(snapshot.serialize(
        await pending, seq, normalize(description), snapshot.Validator(description), fmt=FORMAT_V2))
    for k in range(records if made else 0):
        db.set(made[k % len(made)], "name_description", f"revision {k}")
        if k % BATCH == BATCH - 1:
            await server.services.commit(db.last_seq)
    await server.services.commit(db.last_seq)
    stats = store.stats()
    store.set_capture(None)  # stop without a final snapshot: the records stay to be replayed
    await server.stop()
    return {"seconds": time.perf_counter() - began, "snapshot_bytes": stats["snapshot_bytes"],
            "journal_bytes": stats["journal_bytes"]}


def build_state_dir(path: str | Path, vms: int, records: int) -> dict[str, float]:
    """:func:`build` from code that runs no event loop of its own."""
    return asyncio.run(build(Path(path).absolute(), vms, records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statedir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=10_000, help="halted VMs to add (default 10000)")
    parser.add_argument("--journal", type=int, default=0, metavar="M",
                        help="journal records to leave after the snapshot (default 0)")
    parser.add_argument("dir", type=Path, help="the state directory (created; existing state is kept)")
    args = parser.parse_args(argv)
    built = build_state_dir(args.dir, args.vms, args.journal)
    print(f"{args.dir}: {args.vms} VMs added, snapshot {built['snapshot_bytes']} bytes, {args.journal} journal "
          f"records ({built['journal_bytes']} bytes), {built['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
