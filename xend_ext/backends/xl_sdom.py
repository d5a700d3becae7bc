"""Measured CPU shares and scheduling domains on Xen, for the xl backend.

**Utilisation.** Xen keeps the CPU time each vCPU has run (ns); ``xl vcpu-list`` prints it in
seconds with one decimal. :class:`CpuMeter` samples it at every poll of the xl backend and gives
each vCPU's share of one pCPU over the *window*: the CPU time it ran between the oldest sample no
older than ``window`` seconds (10 by default, at least one poll) and the newest, divided by the
wall time between them (taken half-way through each ``xl`` call). xl's 0.1 s resolution makes that
exact to about ±0.1 s / window (±0.01 over 10 s) per vCPU; a domain seen in one sample only has no
figure yet (an empty map).

**Scheduling domains.** Xen never took the seed's patch (member vCPUs drawing credits from the
master's account), so :class:`SchedDomains` stands in for it with a control loop. Every
``interval`` seconds (6 by default, on the poll after it) it measures the CPU each running domain
of a set used since its last step and gives each a cap and a weight of its own (``xl sched-credit``
or ``sched-credit2``, by the pool's scheduler) so that

* the caps of the set add up to the master's cap: a domain using clearly less than its cap (below
  80 % of it, measurement error included) gets what it used plus a quarter and a margin, and the
  rest of the master's cap is split equally among the others (max-min fairness by demand); a
  domain just started or just joined counts as wanting all it can get; caps are whole percent and
  at least 1, so a set with more domains than its master's cap percent exceeds it by that rounding;
* the weights add up to the master's weight, split as the caps are (uncapped master: by the same
  rule on each domain's part of what the set used);
* a newcomer (a member joining, or starting) takes its part only after the others' caps have been
  lowered, so the sum holds at every moment, not only after the next step.

What it can guarantee: the set together never gets more than the master's cap (Xen enforces each
domain's cap, and they add up to it), within Xen's own cap accuracy. What it cannot: the division
inside the set follows demand one to two intervals late, and is not work-conserving meanwhile
(what one member leaves unused goes to the others only at the next step, so the set may use less
than the master's cap for that long); credit2 applies a weight per vCPU, so the set's weight
against other domains is the master's only for one-vCPU domains; a domain changed with ``xl
sched-credit`` behind our back is set again at the next step. Domains report the weight and cap
asked of them (the master's are the set's); ``xl sched-credit2`` shows what the loop gave Xen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .base import SchedDomain

RESOLUTION = 0.1  # seconds: xl prints each vCPU's time with one decimal
WINDOW = 10.0  # seconds the utilisation figure looks back over
INTERVAL = 6.0  # seconds between the control loop's steps
UNDER = 0.8  # a domain using less than this part of its cap (error included) does not need all of it
HEADROOM = 1.25  # what such a domain gets: its use times this, plus the measurement error and 1 %

Times = dict[int, dict[int, float]]  # {domid: {vcpu: seconds run}}


class CpuMeter:
    """The CPU time Xen keeps per vCPU, sampled at every poll; shares of one pCPU over the window."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, Times]] = deque()

    def add(self, at: float, times: Times) -> None:
        """A sample taken at monotonic time ``at``: what ``xl vcpu-list`` printed."""
        self._samples.append((at, times))
        # keep the newest sample at least `window` older than this one, and nothing before it
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def use(self, domid: int, since: float = -math.inf) -> tuple[float, dict[int, float]] | None:
        """(seconds elapsed, {vcpu: seconds run}) from the oldest sample taken at or after ``since``
        that shows the domain, to the newest; None without two such samples."""
        if not self._samples:
            return None
        at, newest = self._samples[-1]
        if domid not in newest:
            return None
        first = next(((t, s) for t, s in self._samples if t >= since and domid in s), None)
        if first is None or first[0] >= at:
            return None
        before = first[1][domid]
        return at - first[0], {v: max(0.0, secs - before.get(v, secs)) for v, secs in newest[domid].items()}

    def shares(self, domid: int) -> dict[int, float]:
        """Each vCPU's share of one pCPU over the window ({} while there is no figure)."""
        used = self.use(domid)
        if used is None:
            return {}
        elapsed, secs = used
        return {v: round(min(1.0, s / elapsed), 3) for v, s in sorted(secs.items())}


def split(budget: float, demands: list[float | None]) -> list[float]:
    """Max-min fair division of ``budget`` (water-filling): a demand below an equal part of what is
    left gets what it asks, the others (None: any amount) share the rest equally; when every demand
    is met, what is left is shared equally by all."""
    given = [0.0] * len(demands)
    left = budget
    order = sorted(range(len(demands)), key=lambda i: math.inf if demands[i] is None else demands[i])
    for k, i in enumerate(order):
        part = left / (len(order) - k)
        d = demands[i]
        given[i] = part if d is None or d >= part else d
        left -= given[i]
    if left > 1e-9 and demands:
        given = [g + left / len(demands) for g in given]
    return given


def whole(parts: list[float], total: int) -> list[int]:
    """``parts`` (summing to ``total``) as whole numbers of at least 1 summing to ``total`` where
    that is possible (largest remainders first)."""
    floors = [max(1, math.floor(p)) for p in parts]
    spare = total - sum(floors)
    for i in sorted(range(len(parts)), key=lambda i: floors[i] - parts[i])[:max(0, spare)]:
        floors[i] += 1
    return floors


@dataclass(frozen=True)
class Running:
    """A running domain of a set, as the control loop sees it."""

    uuid: str
    domid: int
    vcpus: int
    used: float | None  # pCPUs used since the last step (1.0 = one pCPU); None: not known yet
    elapsed: float  # seconds that figure covers
    given: tuple[int, int] | None  # (weight, cap) the loop gave Xen; None: not given yet


def plan(weight: int, cap: int, domains: list[Running]) -> dict[str, tuple[int, int]]:
    """(weight, cap) for each domain of a set whose master has ``weight`` and ``cap``."""
    if not domains:
        return {}

    def error(d: Running) -> float:  # in pCPUs: xl's rounding of each vCPU's time, at both ends
        return 2 * RESOLUTION * d.vcpus / d.elapsed if d.elapsed > 0 else 1.0

    if cap > 0:
        demands: list[float | None] = []
        for d in domains:
            had = d.given[1] if d.given else 0
            if d.used is None or not had or (d.used + error(d)) * 100 >= UNDER * had:
                demands.append(None)  # wants at least what it had
            else:
                demands.append(d.used * 100 * HEADROOM + error(d) * 100 + 1)
        caps = whole(split(cap, demands), cap)
        weights = whole([weight * c / sum(caps) for c in caps], weight)
        return {d.uuid: (w, c) for d, w, c in zip(domains, weights, caps, strict=True)}
    total = sum(d.used or 0.0 for d in domains)
    had = sum(d.given[0] for d in domains if d.given)
    demands = []
    for d in domains:
        if d.used is None or d.given is None or total <= 0 or not had:
            demands.append(None)
            continue
        part, was = d.used / total, d.given[0] / had
        demands.append(None if part + error(d) / total >= UNDER * was else part * HEADROOM + error(d) / total)
    weights = whole([weight * s for s in split(1.0, demands)], weight)
    return {d.uuid: (w, 0) for d, w in zip(domains, weights, strict=True)}


class SchedDomains:
    """The scheduling domains of an xl host and the loop keeping their caps and weights.

    ``state`` is the backend's state file's dict: the sets (``sched_domains``) and the weight and
    cap asked of each domain in a set (``sched_asked``, given back to Xen when it leaves) persist
    there. The backend reads Xen and acts; this decides."""

    def __init__(self, state: dict, meter: CpuMeter, interval: float = INTERVAL) -> None:
        self.meter = meter
        self.interval = interval
        self.state = state
        state.setdefault("sched_domains", [])
        state.setdefault("sched_asked", {})
        self.given: dict[str, tuple[int, int]] = {}  # uuid -> what the loop last gave Xen
        self.last = -math.inf  # monotonic time of the last step

    @property
    def sets(self) -> list[SchedDomain]:
        return [SchedDomain(master=s["master"], members=frozenset(s["members"]), weight=s["weight"], cap=s["cap"])
                for s in self.state["sched_domains"]]

    def replace_sets(self, domains: Iterable[SchedDomain]) -> set[str]:
        """Keep ``domains`` from now on; returns the uuids that left every set."""
        before = self.controlled()
        self.state["sched_domains"] = [{"master": sd.master, "members": sorted(sd.members), "weight": sd.weight,
                                        "cap": sd.cap} for sd in domains]
        left = before - self.controlled()
        for uuid in left:
            self.given.pop(uuid, None)
        return left

    def controlled(self) -> set[str]:
        return {u for sd in self.sets for u in (sd.master, *sd.members)}

    def asked(self, uuid: str) -> tuple[int, int] | None:
        """The weight and cap asked of a domain of a set (None: not in one, or not known)."""
        got = self.state["sched_asked"].get(uuid)
        return (int(got[0]), int(got[1])) if got else None

    def ask(self, uuid: str, weight: int, cap: int) -> None:
        self.state["sched_asked"][uuid] = [weight, cap]

    def forget(self, uuid: str) -> None:
        self.state["sched_asked"].pop(uuid, None)
        self.given.pop(uuid, None)

    def due(self, now: float) -> bool:
        return bool(self.state["sched_domains"]) and now - self.last >= self.interval

    def step(self, now: float, running: dict[str, tuple[int, int]], newcomer: str = "") -> dict[str, tuple[int, int]]:
        """The (weight, cap) every running domain of a set should have now. ``running``: {uuid:
        (domid, vCPUs)} of the domains Xen runs; ``newcomer``: a domain about to start, counted as
        running and wanting all it can get."""
        since, self.last = self.last, now
        wanted: dict[str, tuple[int, int]] = {}
        for sd in self.sets:
            inside = [u for u in sorted({sd.master, *sd.members}) if u in running or u == newcomer]
            master = self.asked(sd.master) if sd.master in running or sd.master == newcomer else None
            weight, cap = master or (sd.weight, sd.cap)
            domains = []
            for u in inside:
                domid, vcpus = running.get(u, (-1, 1))
                used = self.meter.use(domid, since) if u != newcomer else None
                domains.append(Running(u, domid, vcpus, sum(used[1].values()) / used[0] if used else None,
                                       used[0] if used else 0.0, self.given.get(u) if u != newcomer else None))
            wanted.update(plan(weight, cap, domains))
        return wanted
