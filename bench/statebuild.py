"""Large state directories for the bench, built once and kept in a cache.

The states are built by :mod:`bench.statedir` (the server's own model and store, in process:
``vms`` halted VMs named ``vm-0`` .. ``vm-<n-1>``, then as many journal records changing their
``name_description`` in turn, so replaying them touches objects without growing them) and kept
in ``var/bench-states`` under a name that changes with the schema and the generator's source.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from bench import statedir
from bench.statedir import build_state_dir, vm_name  # noqa: F401 - the bench's names for them
from xend_ext.store import snapshot
from xend_ext.store.schema import relaxng


def state_key(vms: int, journal_records: int) -> str:
    """A name for a built state: its size and a digest of what it holds (the schema and the
    generator), so that a cached state is rebuilt when either changes."""
    from xenapi_classes import build_registry

    digest = hashlib.sha256()
    digest.update(relaxng(build_registry().description()).encode())
    digest.update(Path(statedir.__file__).read_bytes())
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
    built = build_state_dir(aside, vms, journal_records)
    (aside / "lock").unlink(missing_ok=True)
    aside.rename(path)
    return path, built
