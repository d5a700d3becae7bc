"""The fluid credit-scheduler model: the issue's worked figures, an exact reference, and invariants.

The figures are what an operator would predict by hand, so they pin the semantics; the exact
reference (brute force over pCPU subsets with Fractions) checks the flow-based solver on small hosts
where every corner case is cheap to enumerate; the properties guard what must hold on any input.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xend_ext.sched_model import VCPU, Allocation, Entity, per_pcpu_load, shares, solve

EPS = 1e-6


def vm(name: str, *affinities: Iterable[int], weight: int = 256, cap: int = 0) -> Entity:
    """An entity for one VM whose vCPU i may run on ``affinities[i]``."""
    vcpus = tuple(VCPU(name, i, frozenset(a)) for i, a in enumerate(affinities))
    return Entity(name, weight, cap, vcpus)


# --- the acceptance figures -----------------------------------------------------------------


def test_two_equal_vms_pinned_to_one_pcpu_split_it():
    assert shares([0, 1], [vm("a", {0}), vm("b", {0})]) == pytest.approx({("a", 0): 0.5, ("b", 0): 0.5})


def test_weight_is_a_relative_share():
    got = shares([0], [vm("a", {0}, weight=512), vm("b", {0}, weight=256)])
    assert got == pytest.approx({("a", 0): 2 / 3, ("b", 0): 1 / 3})


def test_cap_alone_on_host():
    assert shares(range(4), [vm("a", range(4), cap=10)]) == pytest.approx({("a", 0): 0.10})


def test_cap_bounds_the_sum_over_vcpus():
    got = shares(range(4), [vm("a", range(4), range(4), cap=100)])
    assert got == pytest.approx({("a", 0): 0.5, ("a", 1): 0.5})


def test_a_vcpu_never_exceeds_one_pcpu():
    assert shares(range(8), [vm("a", range(8))]) == pytest.approx({("a", 0): 1.0})


def test_three_vms_on_two_pcpus():
    got = shares([0, 1], [vm(n, {0, 1}) for n in "abc"])
    assert got == pytest.approx({(n, 0): 2 / 3 for n in "abc"})


def test_free_vcpus_make_room_for_a_pinned_one():
    alloc = solve([0, 1], [vm("a", {0}), vm("b", {0, 1}), vm("c", {0, 1})])
    assert alloc.vcpu == pytest.approx({(n, 0): 2 / 3 for n in "abc"})
    assert alloc.pcpu == pytest.approx({0: 1.0, 1: 1.0})
    assert set(alloc.flows[("a", 0)]) == {0}


def test_pins_to_different_pcpus():
    got = shares([0, 1], [vm("a", {0}), vm("b", {0}), vm("c", {1})])
    assert got == pytest.approx({("a", 0): 0.5, ("b", 0): 0.5, ("c", 0): 1.0})


def test_scheduling_domain_shares_one_cap():
    domain = Entity("dom", 256, 10, (VCPU("vm1", 0, frozenset({0, 1})), VCPU("vm2", 0, frozenset({0, 1}))))
    got = shares([0, 1], [domain])
    assert got == pytest.approx({("vm1", 0): 0.05, ("vm2", 0): 0.05})


def test_capped_time_goes_to_the_others():
    got = shares([0], [vm("a", {0}, cap=20), vm("b", {0})])
    assert got == pytest.approx({("a", 0): 0.2, ("b", 0): 0.8})


# --- smaller behaviours -----------------------------------------------------------------------------


def test_weight_is_spread_over_the_vcpus():
    # a: 2 vCPUs of weight 256 -> 128 each; b: 1 vCPU of weight 256.  On one pCPU: 1/4, 1/4, 1/2.
    got = shares([0], [vm("a", {0}, {0}), vm("b", {0})])
    assert got == pytest.approx({("a", 0): 0.25, ("a", 1): 0.25, ("b", 0): 0.5})


def test_cap_above_one_pcpu():
    got = shares(range(4), [vm("a", range(4), range(4), cap=150)])
    assert got == pytest.approx({("a", 0): 0.75, ("a", 1): 0.75})


def test_nowhere_to_run_gives_zero():
    got = shares([0, 1], [vm("a", set(), {7}, {1})])
    assert got == pytest.approx({("a", 0): 0.0, ("a", 1): 0.0, ("a", 2): 1.0})


def test_pools_are_disjoint_affinities():
    pool0 = [vm("a", {0}), vm("b", {0})]
    pool1 = [vm("c", {1, 2, 3}, weight=1)]
    assert shares(range(4), pool0 + pool1) == pytest.approx({("a", 0): 0.5, ("b", 0): 0.5, ("c", 0): 1.0})


def test_empty_inputs():
    assert solve([], []) == Allocation({}, {}, {})
    assert solve([0, 1], []).pcpu == {0: 0.0, 1: 0.0}
    assert shares([], [vm("a", {0})]) == {("a", 0): 0.0}


def test_per_pcpu_load():
    assert per_pcpu_load([0, 1, 2], [vm("a", {0}, cap=30), vm("b", {1})]) == pytest.approx({0: 0.3, 1: 1.0, 2: 0.0})


def test_input_order_does_not_matter():
    ents = [vm("a", {0}), vm("b", {0, 1}, weight=300), vm("c", {1, 2}, {2}, cap=70), vm("d", {0, 2}, weight=9)]
    first = solve([2, 0, 1], ents)
    again = solve([0, 1, 2], list(reversed(ents)))
    assert first == again
    assert list(first.vcpu) == sorted(first.vcpu)


@pytest.mark.parametrize("bad", [
    [vm("a", {0}, weight=0)],
    [vm("a", {0}, cap=-1)],
    [vm("a", {0}), Entity("dom", 256, 0, (VCPU("a", 0, frozenset({0})),))],
])
def test_rejects_meaningless_input(bad):
    with pytest.raises(ValueError):
        solve([0], bad)


# --- an exact, independent reference ----------------------------------------------------------------


def reference(pcpus: list[int], entities: list[Entity]) -> dict[tuple[str, int], Fraction]:
    """Water-filling in exact arithmetic, with Hall's condition over every subset of pCPUs.

    Demands are feasible iff, for every pCPU set P, the vCPUs confined to P want at most |P|; a set
    that is exactly full freezes the vCPUs confined to it.  Exponential, so small hosts only.
    """
    host = set(pcpus)
    rate, aff, entity_of, limit = {}, {}, {}, {}
    share: dict[tuple[str, int], Fraction] = {}
    for e in entities:
        limit[e.name] = Fraction(e.cap, 100) if e.cap else None
        for v in e.vcpus:
            key = (v.owner, v.index)
            share[key] = Fraction(0)
            if v.affinity & host:
                rate[key] = Fraction(e.weight, len(e.vcpus))
                aff[key] = frozenset(v.affinity & host)
                entity_of[key] = e.name
    subsets = [frozenset(c) for k in range(1, len(pcpus) + 1) for c in itertools.combinations(pcpus, k)]
    confined = {p: [k for k in aff if aff[k] <= p] for p in subsets}
    growing = set(aff)
    level = Fraction(0)
    while growing:
        fixed = {name: sum((share[k] for k in aff if entity_of[k] == name and k not in growing), Fraction(0))
                 for name in limit}
        speed = {name: sum((rate[k] for k in growing if entity_of[k] == name), Fraction(0)) for name in limit}
        bounds = [1 / rate[k] for k in growing]
        bounds += [(limit[n] - fixed[n]) / speed[n] for n in limit if limit[n] is not None and speed[n]]
        for p in subsets:
            speed_p = sum((rate[k] for k in confined[p] if k in growing), Fraction(0))
            if speed_p:
                bounds.append((len(p) - sum((share[k] for k in confined[p] if k not in growing), Fraction(0)))
                              / speed_p)
        level = min(bounds)
        for k in growing:
            share[k] = rate[k] * level
        stop = {k for k in growing if share[k] == 1}
        stop |= {k for k in growing if limit[entity_of[k]] is not None
                 and sum((share[j] for j in aff if entity_of[j] == entity_of[k]), Fraction(0)) == limit[entity_of[k]]}
        for p in subsets:
            if sum((share[k] for k in confined[p]), Fraction(0)) == len(p):
                stop |= set(confined[p]) & growing
        assert stop
        growing -= stop
    return share


def host_and_entities(max_pcpus: int, max_entities: int):
    """Hypothesis strategy: a small host and VMs / scheduling domains with arbitrary pins and caps."""

    @st.composite
    def build(draw):
        npcpu = draw(st.integers(1, max_pcpus))
        pcpus = list(range(npcpu))
        # affinities may name pCPUs that are not on the host: the model must ignore them
        affinity = st.frozensets(st.integers(0, npcpu), max_size=npcpu + 1)
        entities = []
        for i in range(draw(st.integers(0, max_entities))):
            owners = draw(st.integers(1, 2))  # 2 owners = a scheduling domain
            nv = draw(st.integers(1, 3))
            vcpus = tuple(VCPU(f"vm{i}.{j % owners}", j, draw(affinity)) for j in range(nv))
            weight = draw(st.sampled_from([1, 7, 128, 256, 256, 512, 1000, 65535]))
            cap = draw(st.sampled_from([0, 0, 0, 1, 10, 33, 50, 100, 150, 250]))
            entities.append(Entity(f"e{i}", weight, cap, vcpus))
        return pcpus, entities

    return build()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host_and_entities(max_pcpus=4, max_entities=5))
def test_matches_exact_reference(case):
    pcpus, entities = case
    expected = {k: float(v) for k, v in reference(pcpus, entities).items()}
    assert shares(pcpus, entities) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_on_random_tight_hosts(seed):
    """Narrow random pins on a 5-pCPU host make many nested bottlenecks, the hardest case for the flow."""
    rnd = random.Random(seed)
    entities = []
    for i in range(rnd.randint(3, 8)):
        vcpus = tuple(VCPU(f"vm{i}", j, frozenset(rnd.sample(range(5), rnd.randint(1, 3))))
                      for j in range(rnd.randint(1, 3)))
        entities.append(Entity(f"vm{i}", rnd.randint(1, 1000), rnd.choice([0, 0, 40, 120]), vcpus))
    expected = {k: float(v) for k, v in reference(list(range(5)), entities).items()}
    assert shares(range(5), entities) == pytest.approx(expected, abs=1e-7)


# --- invariants on larger inputs --------------------------------------------------------------------


def check_invariants(pcpus: list[int], entities: list[Entity], alloc: Allocation) -> None:
    """What must hold for any input: bounds, caps, affinity, conservation, and no idle time wasted."""
    host = set(pcpus)
    assert set(alloc.pcpu) == host
    assert set(alloc.vcpu) == {(v.owner, v.index) for e in entities for v in e.vcpus}
    for share in alloc.vcpu.values():
        assert 0.0 <= share <= 1.0
    for load in alloc.pcpu.values():
        assert 0.0 <= load <= 1.0 + EPS
    used = dict.fromkeys(host, 0.0)
    for e in entities:
        for v in e.vcpus:
            key = (v.owner, v.index)
            flow = alloc.flows.get(key, {})
            assert set(flow) <= v.affinity & host
            assert sum(flow.values()) == pytest.approx(alloc.vcpu[key], abs=EPS)
            for p, amount in flow.items():
                used[p] += amount
    assert used == pytest.approx(alloc.pcpu, abs=EPS)
    for e in entities:
        total = sum(alloc.vcpu[(v.owner, v.index)] for v in e.vcpus)
        if e.cap:
            assert total <= e.cap / 100 + EPS
        for v in e.vcpus:
            short = alloc.vcpu[(v.owner, v.index)] < 1.0 - EPS
            under_cap = not e.cap or total < e.cap / 100 - EPS
            room = [p for p in v.affinity & host if alloc.pcpu[p] < 1.0 - EPS]
            assert not (short and under_cap and room), f"{v} could still use pCPUs {room}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host_and_entities(max_pcpus=8, max_entities=10))
def test_invariants(case):
    pcpus, entities = case
    check_invariants(pcpus, entities, solve(pcpus, entities))


@settings(max_examples=100, deadline=None)
@given(host_and_entities(max_pcpus=6, max_entities=8))
def test_doubling_every_weight_changes_nothing(case):
    pcpus, entities = case
    doubled = [Entity(e.name, e.weight * 2, e.cap, e.vcpus) for e in entities]
    assert shares(pcpus, doubled) == pytest.approx(shares(pcpus, entities), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(host_and_entities(max_pcpus=6, max_entities=8))
def test_an_idle_pcpu_nobody_may_use_changes_nothing(case):
    pcpus, entities = case
    extra = 100  # outside every affinity the strategy draws
    before = solve(pcpus, entities)
    after = solve(pcpus + [extra], entities)
    assert after.vcpu == pytest.approx(before.vcpu, abs=1e-9)
    assert after.pcpu == pytest.approx({**before.pcpu, extra: 0.0}, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(host_and_entities(max_pcpus=6, max_entities=8))
def test_deterministic(case):
    pcpus, entities = case
    assert solve(pcpus, entities) == solve(list(reversed(pcpus)), list(reversed(entities)))


def random_host(seed: int, npcpu: int, nvcpu: int) -> list[Entity]:
    """VMs of 1-8 vCPUs with random weights, some caps, and random affinities of any width."""
    rnd = random.Random(seed)
    entities: list[Entity] = []
    count = 0
    while count < nvcpu:
        name = f"vm{len(entities):03d}"
        nv = min(rnd.randint(1, 8), nvcpu - count)
        vcpus = tuple(VCPU(name, j, frozenset(rnd.sample(range(npcpu), rnd.randint(1, npcpu)))) for j in range(nv))
        cap = rnd.randint(1, 400) if rnd.random() < 0.25 else 0
        entities.append(Entity(name, rnd.randint(1, 65535), cap, vcpus))
        count += nv
    return entities


@pytest.mark.parametrize("seed", range(3))
def test_64_pcpus_200_vcpus_holds_the_invariants(seed):
    """A host-sized case (its speed is measured in bench/, never asserted here)."""
    entities = random_host(seed, 64, 200)
    alloc = solve(range(64), entities)
    check_invariants(list(range(64)), entities, alloc)
    assert math.fsum(alloc.pcpu.values()) <= 64 + EPS
