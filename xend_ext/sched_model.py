"""A fluid model of Xen's credit scheduler: how much CPU each vCPU gets when every vCPU is busy.

The simulated backend has no real hypervisor, yet ``VM_metrics.VCPUs_utilisation`` must move the way it
would on Xen when weights, caps, pins or pools change.  This module answers that question for the
worst case, every vCPU CPU-bound, with a *fluid* approximation of the credit scheduler: time slices are
ignored and each vCPU simply receives a fraction of a pCPU.  Those fractions follow the scheduler's rules:

* **weight** is a relative share among competitors, not an absolute amount: a VM of weight 512 gets
  twice what a VM of weight 256 gets *when both want the same CPUs*.  An entity's weight is spread
  evenly over its vCPUs, as credit does when it hands out credits per vCPU.
* **cap** is an upper bound in percent of *one* pCPU for the whole entity (``cap=150`` is one and a
  half pCPUs, 0 means uncapped).  Capped time nobody else is refused: the scheduler is
  work-conserving, so what a capped VM leaves behind goes to the others.
* **affinity** restricts where a vCPU runs (hard pins, the vCPU's CPU pool, CPUs set aside for
  exclusive use); the caller has already reduced it.  CPU pools are disjoint affinity sets, so
  scheduling each pool on its own comes for free and the model needs no notion of pools.
* a vCPU never uses more than one pCPU, and a pCPU never gives out more than all of its time.

Together these rules define a *weighted max-min fair* allocation, computed by water-filling: every
vCPU that can still grow gets ``rate x t`` for a common level ``t`` rising from 0, where ``rate`` is
its entity's weight divided by its number of vCPUs.  A vCPU freezes when it reaches one pCPU, when its
entity reaches its cap, or when every pCPU it could use is saturated; then the others go on rising.

"Saturated" is a flow question, because a vCPU with a wide affinity can make room for a pinned one by
moving elsewhere.  The model is the network source -> entity (capacity cap/100) -> vCPU (capacity its
demand) -> allowed pCPU (unbounded) -> sink (capacity 1 per pCPU).  An entity's edge only bounds the
sum of its vCPUs' demands, which the level arithmetic enforces directly, so the flow solved here is the
bipartite part: demands are feasible iff the maximum flow meets them all.  For each phase the highest
feasible level is found by Newton's method on the minimum cut (cut capacity and total demand are both
linear in ``t``), and the vCPUs left unable to reach the sink in the residual network are exactly the
ones whose pCPUs are all saturated.  A saturated set of pCPUs stays full of its own vCPUs for good, so
it leaves the network, which keeps later phases small.

Everything is pure and deterministic: inputs are sorted before use and floats are rounded to 1e-9 on
the way out so that equal inputs give identical outputs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

VCPUKey = tuple[str, int]

_ROUND = 9  # decimal places kept in results: hides float noise, far below anything worth reporting
_RES_EPS = 1e-12  # residual capacity below this is float noise, not room to push flow through
_TOL = 1e-9  # slack below this counts as "full" (pCPU saturated, cap reached, demand met)
_MAX_NEWTON = 64  # Newton on a piecewise-linear concave function ends in few steps; this is a safety net


@dataclass(frozen=True)
class VCPU:
    """One virtual CPU and the pCPUs it may run on (already narrowed by pins, pool and occupancy)."""

    owner: str
    index: int
    affinity: frozenset[int]


@dataclass(frozen=True)
class Entity:
    """One scheduling entity: a VM, or a scheduling domain (several VMs sharing one VM's weight and cap)."""

    name: str
    weight: int
    cap: int
    vcpus: tuple[VCPU, ...]


@dataclass(frozen=True)
class Allocation:
    """The model's answer: per-vCPU share, per-pCPU load, and where each vCPU's time comes from.

    ``flows`` is kept so that callers and tests can see that vCPUs only run where they may and that
    no pCPU is over-committed; it lists only non-zero amounts.
    """

    vcpu: dict[VCPUKey, float] = field(default_factory=dict)
    pcpu: dict[int, float] = field(default_factory=dict)
    flows: dict[VCPUKey, dict[int, float]] = field(default_factory=dict)


class _Network:
    """A small residual flow network (Dinic's algorithm) with nodes that can be retired for good.

    Edges are stored in pairs (``e`` and its reverse ``e ^ 1``) so that the flow on an edge is the
    residual capacity of its reverse; retired nodes are skipped by every search.
    """

    def __init__(self, nodes: int) -> None:
        self.adj: list[list[int]] = [[] for _ in range(nodes)]
        self.to: list[int] = []
        self.res: list[float] = []
        self.alive: list[bool] = [True] * nodes

    def add_edge(self, u: int, v: int, cap: float) -> int:
        """Add ``u -> v`` with capacity ``cap``; returns the edge index (its flow is ``res[index ^ 1]``)."""
        index = len(self.to)
        self.to += [v, u]
        self.res += [cap, 0.0]
        self.adj[u].append(index)
        self.adj[v].append(index + 1)
        return index

    def _levels(self, s: int, t: int) -> list[int] | None:
        """BFS distances from ``s`` over usable residual edges, or None when ``t`` is out of reach."""
        level = [-1] * len(self.adj)
        level[s] = 0
        queue = deque([s])
        to, res, alive = self.to, self.res, self.alive
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                v = to[e]
                if level[v] < 0 and res[e] > _RES_EPS and alive[v]:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level if level[t] >= 0 else None

    def max_flow(self, s: int, t: int) -> None:
        """Push as much extra flow from ``s`` to ``t`` as the residual network allows."""
        to, res, adj = self.to, self.res, self.adj
        while (level := self._levels(s, t)) is not None:
            pointer = [0] * len(adj)
            while True:
                # Iterative DFS for one augmenting path in the level graph (paths can be long).
                path: list[int] = []
                u = s
                while u != t:
                    edges = adj[u]
                    i = pointer[u]
                    while i < len(edges):
                        e = edges[i]
                        if res[e] > _RES_EPS and level[to[e]] == level[u] + 1:
                            break
                        i += 1
                    pointer[u] = i
                    if i < len(edges):
                        path.append(edges[i])
                        u = to[edges[i]]
                    elif u == s:
                        break
                    else:  # dead end: never come back here in this phase
                        level[u] = -1
                        u = to[path.pop() ^ 1]
                        pointer[u] += 1
                if u != t:
                    break
                push = min(res[e] for e in path)
                for e in path:
                    res[e] -= push
                    res[e ^ 1] += push

    def reachable_from(self, s: int) -> list[bool]:
        """Nodes reachable from ``s`` in the residual network: the source side of a minimum cut."""
        seen = [False] * len(self.adj)
        seen[s] = True
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                v = self.to[e]
                if not seen[v] and self.res[e] > _RES_EPS and self.alive[v]:
                    seen[v] = True
                    queue.append(v)
        return seen

    def reaching(self, t: int, slack: float) -> list[bool]:
        """Nodes with a residual path of more than ``slack`` to ``t``: those that could still send more."""
        seen = [False] * len(self.adj)
        seen[t] = True
        queue = deque([t])
        while queue:
            w = queue.popleft()
            for e in self.adj[w]:
                u = self.to[e]
                if not seen[u] and self.res[e ^ 1] > slack and self.alive[u]:
                    seen[u] = True
                    queue.append(u)
        return seen


def _validate(entities: list[Entity]) -> None:
    """Reject inputs the model cannot give a meaning to, rather than return a plausible wrong answer."""
    seen: set[VCPUKey] = set()
    for entity in entities:
        if entity.weight < 1:
            raise ValueError(f"entity {entity.name!r}: weight must be at least 1, not {entity.weight}")
        if entity.cap < 0:
            raise ValueError(f"entity {entity.name!r}: cap must be 0 (uncapped) or positive, not {entity.cap}")
        for vcpu in entity.vcpus:
            key = (vcpu.owner, vcpu.index)
            if key in seen:
                raise ValueError(f"vCPU {key} appears more than once")
            seen.add(key)


def solve(pcpus: Iterable[int], entities: Iterable[Entity]) -> Allocation:
    """Weighted max-min fair shares of the pCPUs among CPU-bound vCPUs (see the module docstring)."""
    pcpu_list = sorted(set(pcpus))
    entity_list = sorted(entities, key=lambda e: e.name)
    _validate(entity_list)

    # Index the vCPUs in a fixed order; those with nowhere to run get 0 and stay out of the network.
    pcpu_set = set(pcpu_list)
    keys: list[VCPUKey] = []
    rate: list[float] = []
    owner_entity: list[int] = []
    allowed: list[list[int]] = []
    shares_out: dict[VCPUKey, float] = {}
    for ei, entity in enumerate(entity_list):
        for vcpu in sorted(entity.vcpus, key=lambda v: (v.owner, v.index)):
            where = sorted(vcpu.affinity & pcpu_set)
            if not where:
                shares_out[(vcpu.owner, vcpu.index)] = 0.0
                continue
            keys.append((vcpu.owner, vcpu.index))
            rate.append(entity.weight / len(entity.vcpus))
            owner_entity.append(ei)
            allowed.append(where)
    limit = [e.cap / 100 if e.cap else math.inf for e in entity_list]

    n = len(keys)
    pcpu_node = {p: n + 1 + i for i, p in enumerate(pcpu_list)}
    source, sink = n, n + 1 + len(pcpu_list)
    net = _Network(sink + 1)
    supply = [net.add_edge(source, v, 0.0) for v in range(n)]
    placed: list[list[tuple[int, int]]] = [
        [(p, net.add_edge(v, pcpu_node[p], math.inf)) for p in allowed[v]] for v in range(n)
    ]
    drain = {p: net.add_edge(node, sink, 1.0) for p, node in pcpu_node.items()}

    demand = [0.0] * n
    frozen = [False] * n
    unfrozen = set(range(n))
    level = 0.0
    while unfrozen:
        active = sorted(unfrozen)
        fixed = [0.0] * len(entity_list)
        growing = [0.0] * len(entity_list)
        for v in range(n):
            if frozen[v]:
                fixed[owner_entity[v]] += demand[v]
            else:
                growing[owner_entity[v]] += rate[v]
        # Highest level the one-pCPU and cap limits allow; the pCPUs may stop us earlier.
        ceiling = min(1.0 / rate[v] for v in active)
        for ei, r in enumerate(growing):
            if r > 0 and limit[ei] < math.inf:
                ceiling = min(ceiling, max(level, (limit[ei] - fixed[ei]) / r))
        level, last_cut = _highest_feasible(net, source, sink, supply, demand, rate, frozen, active,
                                            level, ceiling)

        froze: list[int] = []
        for v in active:
            if rate[v] * level >= 1.0 - _TOL:
                demand[v] = 1.0
                net.res[supply[v]] = 1.0 - net.res[supply[v] ^ 1]
                froze.append(v)
        for v in active:
            ei = owner_entity[v]
            if limit[ei] < math.inf and fixed[ei] + growing[ei] * level >= limit[ei] - _TOL:
                froze.append(v)
        # vCPUs with no residual path to a pCPU with room: their pCPUs are all saturated.  That set of
        # pCPUs stays full of these vCPUs in every later phase, so both leave the network.
        room = net.reaching(sink, _TOL)
        for v in range(n):
            if net.alive[v] and not room[v]:
                net.alive[v] = False
                froze.append(v)
        for node in pcpu_node.values():
            if not room[node]:
                net.alive[node] = False
        if not froze:  # float trouble only: freeze the bottleneck Newton found rather than loop forever
            froze = [v for v in active if last_cut[v]] or active
        for v in froze:
            if not frozen[v]:
                frozen[v] = True
                unfrozen.discard(v)

    flows: dict[VCPUKey, dict[int, float]] = {}
    for v, key in enumerate(keys):
        shares_out[key] = min(1.0, max(0.0, round(demand[v], _ROUND)))
        used = {p: round(net.res[e ^ 1], _ROUND) for p, e in placed[v]}
        used = {p: amount for p, amount in used.items() if amount > 0}
        if used:
            flows[key] = used
    loads = {p: min(1.0, max(0.0, round(net.res[drain[p] ^ 1], _ROUND))) for p in pcpu_list}
    return Allocation(vcpu=dict(sorted(shares_out.items())), pcpu=loads, flows=dict(sorted(flows.items())))


def _highest_feasible(net: _Network, source: int, sink: int, supply: list[int], demand: list[float],
                      rate: list[float], frozen: list[bool], active: list[int], start: float,
                      ceiling: float) -> tuple[float, list[bool]]:
    """The highest level in [start, ceiling] whose demands the pCPUs can carry, with its flow in ``net``.

    Newton's method from above: max-flow at a trial level; if demand is unmet, the minimum cut gives a
    line (cut capacity minus demand, linear in the level) whose root is a lower, better trial.  Each
    step either succeeds or finds a different cut, so it ends after a handful of max-flows.
    """
    feasible_flow = net.res[:]  # the flow of the previous level: valid for any higher level too
    trial = ceiling
    cut: list[bool] = [False] * len(net.adj)
    for attempt in range(_MAX_NEWTON):
        for v in active:
            e = supply[v]
            demand[v] = rate[v] * trial
            net.res[e] = demand[v] - net.res[e ^ 1]
        net.max_flow(source, sink)
        unmet = sum(net.res[supply[v]] for v in range(len(supply)) if net.alive[v])
        if unmet <= _TOL or attempt == _MAX_NEWTON - 1:
            return trial, cut
        cut = net.reachable_from(source)
        pcpus_in_cut = sum(1 for u in range(len(supply) + 1, sink) if cut[u])
        fixed = sum(demand[v] for v in range(len(supply)) if cut[v] and frozen[v])
        growth = sum(rate[v] for v in active if cut[v])
        if growth <= 0:  # the violated cut holds no growing vCPU: only float noise can cause that
            return trial, cut
        better = min(trial, max(start, (pcpus_in_cut - fixed) / growth))
        net.res[:] = feasible_flow
        trial = better
    raise AssertionError("unreachable: the last attempt always returns")


def shares(pcpus: Iterable[int], entities: Iterable[Entity]) -> dict[VCPUKey, float]:
    """{(owner, vcpu index): fraction of one pCPU} for every vCPU of every entity."""
    return solve(pcpus, entities).vcpu


def per_pcpu_load(pcpus: Iterable[int], entities: Iterable[Entity]) -> dict[int, float]:
    """{pCPU: fraction of its time given out}; never above 1, which is what the tests check."""
    return solve(pcpus, entities).pcpu
