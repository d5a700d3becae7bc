"""Large state directories in seconds, written with the project's own model and store code.

:func:`build_state_dir` makes one VM (and its ``VM_metrics``, as a server of today creates it)
in a :class:`~xend_ext.model.Database`, captures its stored form, and repeats that form for
every VM with fresh uuids and refs: no server, no XML-RPC, no per-call checks.  The tables are
written as the snapshot by the store's own ``snapshot.serialize`` (validated against the schema,
as the server writes it), and the journal by the store's own record format, one file as a
running server leaves it.

What is stored: ``vms`` halted VMs named ``vm-0`` .. ``vm-<n-1>`` (:func:`vm_name`); the journal
records change the ``name_description`` of VMs in turn, so replaying them touches objects
without growing them.  The host, its CPUs and pools are left to the server, which makes them at
start as on a new host.

When the store's own generator ``bench.statedir`` is there (``python -m bench.statedir --vms N
--journal M DIR``), :func:`cached_state_dir` builds with it instead; it must name the VMs
``vm-<i>`` as well (P3 looks for ``vm-42``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from xend_ext import model
from xend_ext.events import EventHub
from xend_ext.store import journal, snapshot
from xend_ext.store.fileio import sync, write_all
from xend_ext.store.schema import normalize, relaxng
from xend_ext.wire import REF_PREFIX


def vm_name(index: int) -> str:
    """The name_label of the index-th generated VM."""
    return f"vm-{index}"


def _prototype() -> tuple[dict[str, str], dict[str, dict[str, dict]]]:
    """One VM as the model stores it: {class: stored row} and the ids to renew per copy."""
    from xenapi_classes import build_registry

    db = model.Database(build_registry(), None, EventHub())
    vm = db.create("VM", {"name_label": vm_name(0), "name_description": "generated VM 0"})
    made = [vm]
    if "VM_metrics" in db.registry.classes and "metrics" in vm.cls.fields:
        metrics = db.create("VM_metrics", {"VM": vm.ref})
        db.set(vm, "metrics", metrics.ref)
        made.append(metrics)
    tables = db.capture()
    rows = {obj.cls.name: tables[obj.cls.name][obj.ref] for obj in made}
    ids = {obj.cls.name: obj.uuid for obj in made}
    return ids, rows


def _tables(vms: int) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """Stored rows of ``vms`` copies of the prototype, each with its own uuids and refs."""
    ids, rows = _prototype()
    tables: dict[str, dict[str, dict]] = {cname: {} for cname in rows}
    vm_refs = []
    old_name = rows["VM"]["name_label"]
    for i in range(vms):
        new = {cname: str(uuid.uuid4()) for cname in ids}
        swap = {old_name: vm_name(i), "generated VM 0": f"generated VM {i}"}
        for cname, old in ids.items():
            swap[old], swap[REF_PREFIX + old] = new[cname], REF_PREFIX + new[cname]
        for cname, row in rows.items():
            tables[cname][REF_PREFIX + new[cname]] = {
                f: swap.get(v, v) if isinstance(v, str) else _copy(v) for f, v in row.items()
            }
        vm_refs.append(REF_PREFIX + new["VM"])
    return tables, vm_refs


def _copy(value):
    return value.copy() if isinstance(value, (dict, list)) else value


def build_state_dir(path: str | Path, vms: int, journal_records: int) -> dict[str, float]:
    """Write a state directory holding ``vms`` VMs and ``journal_records`` journal records.

    ``path`` must not hold a state yet.  Returns seconds taken and bytes written, for the report.
    """
    from xenapi_classes import build_registry

    began = time.perf_counter()
    state_dir = Path(path)
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / snapshot.SNAPSHOT_NAME).exists():
        raise FileExistsError(f"{state_dir} already holds a state")
    description = build_registry().description()
    classes = normalize(description)
    tables, vm_refs = _tables(vms)
    data = snapshot.serialize(tables, 0, classes, snapshot.Validator(relaxng(description)))
    snapshot.commit(state_dir, snapshot.write_temp(state_dir, data))
    journal_bytes = 0
    if journal_records and vm_refs:
        records = [
            journal.format_record(k + 1, journal.encode_op(
                ("set", "VM", vm_refs[k % len(vm_refs)], "name_description", f"revision {k}"), classes))
            for k in range(journal_records)
        ]
        blob = b"".join(records)
        fd = os.open(state_dir / journal.file_name(1), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, blob)
            sync(fd)
        finally:
            os.close(fd)
        journal_bytes = len(blob)
    return {"seconds": time.perf_counter() - began, "snapshot_bytes": len(data), "journal_bytes": journal_bytes}


#: The store helper's generator, when it is there: ``python -m bench.statedir --vms N --journal M DIR``.
_STATEDIR = importlib.util.find_spec("bench.statedir")


def _build(path: Path, vms: int, journal_records: int) -> dict[str, float]:
    """bench.statedir if present (it must name the VMs vm-<i> too), else build_state_dir."""
    if _STATEDIR is None:
        return build_state_dir(path, vms, journal_records)
    began = time.perf_counter()
    command = [sys.executable, "-m", "bench.statedir", "--vms", str(vms), "--journal", str(journal_records), str(path)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {
        "seconds": time.perf_counter() - began,
        "snapshot_bytes": (path / snapshot.SNAPSHOT_NAME).stat().st_size,
        "journal_bytes": sum(p.stat().st_size for p in path.glob("journal-*")),
    }


def state_key(vms: int, journal_records: int) -> str:
    """A name for a built state: its size and a digest of what it holds (schema, one VM's
    stored row, this module), so that a cached state is rebuilt when any of them changes."""
    from xenapi_classes import build_registry

    ids, rows = _prototype()
    for cname, row in rows.items():
        rows[cname] = {f: "<id>" if any(i in str(v) for i in ids.values()) else v for f, v in row.items()}
    digest = hashlib.sha256()
    digest.update(relaxng(build_registry().description()).encode())
    digest.update(repr(sorted(rows.items())).encode())
    digest.update(Path(__file__).read_bytes())
    if _STATEDIR is not None and _STATEDIR.origin:
        digest.update(Path(_STATEDIR.origin).read_bytes())
    return f"vms{vms}-journal{journal_records}-{digest.hexdigest()[:12]}"


def cached_state_dir(cache: Path, vms: int, journal_records: int) -> tuple[Path, dict[str, float] | None]:
    """A state directory in ``cache``, built unless an identical one is there already.

    Returns its path and the build's figures (None when it came from the cache).  Older builds
    of the same size are removed; the state is built aside and renamed, so a killed run never
    leaves half a state to be reused.
    """
    key = state_key(vms, journal_records)
    path = cache / key
    if (path / snapshot.SNAPSHOT_NAME).exists():
        return path, None
    cache.mkdir(parents=True, exist_ok=True)
    prefix = key.rsplit("-", 1)[0] + "-"
    for old in cache.iterdir():
        if old.name.startswith(prefix) or old.name.startswith(".building-"):
            shutil.rmtree(old, ignore_errors=True)
    aside = cache / f".building-{key}"
    built = _build(aside, vms, journal_records)
    (aside / "lock").unlink(missing_ok=True)
    aside.rename(path)
    return path, built
