"""The xl backend's measured shares and scheduling-domain control loop (xend_ext/backends/xl_sdom.py),
in its own terms: what it decides from given CPU times. On real Xen: tests/test_xl_shares.py."""

from __future__ import annotations

import pytest

from xend_ext.backends.base import SchedDomain
from xend_ext.backends.xl_sdom import CpuMeter, Running, SchedDomains, plan, split, whole


def test_split_is_max_min_fair_by_demand():
    assert split(10, [None, None]) == [5, 5]
    assert split(10, [2, None]) == [2, 8]  # the small demand is met, the rest goes to the other
    assert split(10, [2, 3]) == [4.5, 5.5]  # every demand met: what is left is shared equally
    assert split(9, [None, 1, None]) == [4, 1, 4]
    assert split(4, [5, 5]) == [2, 2]


def test_whole_numbers_keep_the_sum_and_a_minimum_of_one():
    assert whole([5, 5], 10) == [5, 5]
    assert whole([3.3, 3.3, 3.4], 10) == [3, 3, 4]
    assert whole([0.2, 9.8], 10) == [1, 9]
    assert whole([0.5, 0.5, 0.5], 1) == [1, 1, 1]  # more domains than percent: each gets one


def busy(uuid, used=None, given=None, elapsed=6.0):
    return Running(uuid, domid=hash(uuid) % 100, vcpus=1, used=used, elapsed=elapsed, given=given)


def test_a_capped_set_splits_the_masters_cap_and_weight():
    # just joined: nothing measured, everyone wants what it can get
    assert plan(256, 10, [busy("a"), busy("b")]) == {"a": (128, 5), "b": (128, 5)}
    # both used all they had: they keep it
    assert plan(256, 10, [busy("a", 0.05, (128, 5)), busy("b", 0.05, (128, 5))]) == {"a": (128, 5), "b": (128, 5)}
    # b idles: it keeps its use plus the measurement error (0.2 s over 6 s) and 1 %, a gets the rest
    idle = plan(256, 10, [busy("a", 0.05, (128, 5)), busy("b", 0.0, (128, 5))])
    assert idle == {"a": (154, 6), "b": (102, 4)}
    # over a longer interval the error is smaller, so the idle one keeps less
    assert plan(256, 10, [busy("a", 0.05, (128, 5), 20), busy("b", 0.0, (128, 5), 20)])["b"] == (51, 2)
    # whatever the demands, the caps add up to the master's cap and the weights to its weight
    for used in ((0.0, 0.0), (0.01, 0.09), (0.1, 0.0), (None, 0.02)):
        got = plan(300, 30, [busy("a", used[0], (150, 15)), busy("b", used[1], (150, 15))])
        assert sum(c for _, c in got.values()) == 30 and sum(w for w, _ in got.values()) == 300


def test_an_uncapped_set_splits_the_masters_weight_by_demand():
    both = plan(512, 0, [busy("a", 0.33, (256, 0)), busy("b", 0.33, (256, 0))])
    assert both == {"a": (256, 0), "b": (256, 0)}
    # b used almost nothing of what the set got: a takes most of the weight
    one = plan(512, 0, [busy("a", 0.6, (256, 0)), busy("b", 0.01, (256, 0))])
    assert one["a"][0] > 400 and one["a"][0] + one["b"][0] == 512 and one["b"][0] >= 1


def test_the_meter_gives_shares_over_its_window():
    m = CpuMeter(window=10)
    assert m.shares(1) == {}
    m.add(0, {1: {0: 1.0, 1: 0.0}})
    assert m.shares(1) == {}  # one sample: no figure yet
    m.add(5, {1: {0: 1.5, 1: 5.0}})
    assert m.shares(1) == {0: 0.1, 1: 1.0}
    m.add(10, {1: {0: 2.0, 1: 10.0}, 2: {0: 0.0}})
    m.add(15, {1: {0: 3.0, 1: 15.0}, 2: {0: 1.0}})
    assert m.shares(1) == {0: 0.15, 1: 1.0}  # the oldest sample kept is 10 s before the newest
    assert m.shares(2) == {0: 0.2}  # seen since 10
    assert m.use(1, since=7) == (5, {0: 1.0, 1: 5.0})  # the control loop's: since its last step
    assert m.shares(3) == {}


def test_sets_and_asked_parameters_live_in_the_backends_state():
    state: dict = {}
    sdoms = SchedDomains(state, CpuMeter(), interval=6)
    assert not sdoms.due(100.0)  # no set, nothing to do
    sdoms.ask("m", 256, 10)
    assert sdoms.replace_sets([SchedDomain("m", frozenset({"x"}), 256, 10)]) == set()
    assert sdoms.controlled() == {"m", "x"} and sdoms.due(100.0)
    assert state["sched_domains"] == [{"master": "m", "members": ["x"], "weight": 256, "cap": 10}]
    # a member about to start is counted, and the master's asked cap is the set's
    assert sdoms.step(100.0, {"m": (3, 1)}, newcomer="x") == {"m": (128, 5), "x": (128, 5)}
    assert not sdoms.due(103.0) and sdoms.due(106.0)
    # the master does not run: the set has the master's definition
    assert sdoms.step(106.0, {"x": (4, 1)}) == {"x": (256, 10)}
    assert sdoms.replace_sets([]) == {"m", "x"} and sdoms.asked("m") == (256, 10)
    sdoms.forget("m")
    assert sdoms.asked("m") is None


@pytest.mark.parametrize("cap", [1, 2, 7, 100, 250])
def test_caps_never_exceed_the_masters_but_by_the_minimum_of_one(cap):
    for n in (1, 2, 3, 5):
        domains = [busy(str(i), 0.0, (10, 1)) for i in range(n)]
        got = plan(256, cap, domains)
        assert sum(c for _, c in got.values()) == max(cap, n)
