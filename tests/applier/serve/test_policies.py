"""Load-balancing policies on their own: rotation, ties, exclusions and in-flight bookkeeping."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from applier.serve.policies import LeastLoad, RoundRobin, make_policy

URLS = [f"http://127.0.0.1:{9000 + i}" for i in range(4)]


def test_round_robin_cycles_through_a_shuffled_list():
    policy = RoundRobin(random.Random(7))
    policy.set_ready(URLS)
    first = [policy.select() for _ in range(4)]
    assert sorted(first) == URLS
    assert [policy.select() for _ in range(4)] == first


def test_round_robin_keeps_its_order_when_the_set_is_unchanged():
    policy = RoundRobin(random.Random(1))
    policy.set_ready(URLS)
    order = policy.ready
    policy.select()
    policy.set_ready(list(reversed(URLS)))
    assert policy.ready == order
    assert policy.select() == order[1]


def test_round_robin_skips_excluded_replicas():
    policy = RoundRobin(random.Random(3))
    policy.set_ready(URLS[:2])
    a = policy.select()
    assert policy.select(exclude=[a]) != a
    assert policy.select(exclude=URLS[:2]) in URLS[:2]  # all tried: any will do


def test_least_load_picks_the_least_busy():
    policy = LeastLoad()
    policy.set_ready(URLS[:3])
    policy.started(URLS[0])
    policy.started(URLS[0])
    policy.started(URLS[1])
    assert policy.select() == URLS[2]
    policy.started(URLS[2])
    policy.started(URLS[2])
    assert policy.select() == URLS[1]


def test_least_load_rotates_ties():
    policy = LeastLoad()
    policy.set_ready(URLS)
    assert Counter(policy.select() for _ in range(12)) == {u: 3 for u in URLS}


def test_least_load_honours_exclusions_before_load():
    policy = LeastLoad()
    policy.set_ready(URLS[:2])
    policy.started(URLS[1])
    assert policy.select(exclude=[URLS[0]]) == URLS[1]


def test_in_flight_counts_survive_a_replica_leaving_and_returning():
    policy = LeastLoad()
    policy.set_ready(URLS[:2])
    policy.started(URLS[0])
    policy.set_ready(URLS[1:2])
    policy.set_ready(URLS[:2])
    assert policy.load(URLS[0]) == 1
    policy.finished(URLS[0])
    policy.finished(URLS[0])  # never below zero
    assert policy.load(URLS[0]) == 0


def test_empty_ready_set_selects_nothing():
    policy = LeastLoad()
    assert policy.select() is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        (None, LeastLoad),
        ("least_load", LeastLoad),
        ("instance_aware_least_load", LeastLoad),
        ("round_robin", RoundRobin),
    ],
)
def test_make_policy(name, cls):
    assert type(make_policy(name)) is cls
