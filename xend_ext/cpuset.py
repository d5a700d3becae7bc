"""CPU lists as xend wrote them: ``"2,3"``, ``"0-3,^1"``, ``"all"``, or a number of CPUs ``"#4"``.

Used by pinning (``cpumap<N>``), domain and pool config files, and ``xm vcpu-pin``.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\^?)(\d+)(?:-(\d+))?$")
MAX_CPU = 4096


class CpuSetError(ValueError):
    pass


def parse(text: str, ncpus: int | None = None) -> frozenset[int]:
    """The CPUs a spec names; ``^n`` removes n. ``ncpus`` bounds the numbers and gives "all"."""
    text = str(text).strip().strip('"').strip("'")
    if text in ("all", "any", ""):
        if ncpus is None:
            raise CpuSetError("'all' needs to know how many CPUs the host has")
        return frozenset(range(ncpus))
    chosen: set[int] = set()
    removed: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = _RANGE.match(part)
        if m is None:
            raise CpuSetError(f"{part!r} is not a CPU number, a range like 0-3, or an exclusion like ^1")
        neg, lo, hi = m.group(1), int(m.group(2)), int(m.group(3) if m.group(3) is not None else m.group(2))
        if hi < lo:
            raise CpuSetError(f"the range {part!r} runs backwards")
        limit = ncpus if ncpus is not None else MAX_CPU
        if hi >= limit:
            raise CpuSetError(f"CPU {hi} does not exist (the host has {limit})")
        (removed if neg else chosen).update(range(lo, hi + 1))
    if not chosen and removed:  # "^1" alone means every CPU but 1
        if ncpus is None:
            raise CpuSetError("an exclusion alone needs to know how many CPUs the host has")
        chosen = set(range(ncpus))
    return frozenset(chosen - removed)


def format(cpus: frozenset[int] | set[int]) -> str:  # noqa: A001 - the inverse of parse
    """Compact text: ``{0,1,2,3,5}`` -> ``"0-3,5"``."""
    out: list[str] = []
    for n in sorted(cpus):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        elif out and "-" not in out[-1] and int(out[-1]) == n - 1:
            out[-1] = f"{out[-1]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)
