"""Properties of matcher.flow.decide, checked with hypothesis.

Fair-share bounds are checked strictly, ``|count - share| < 1``, with exact
fractions. A plain reference implementation of SPEC §5 (O(n) per request, Fraction
arithmetic, no heaps) must agree with `decide` on every generated snapshot.
"""

from __future__ import annotations

import math

import random
from fractions import Fraction
from typing import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.flow import (
    Astrologer,
    Decision,
    FlowSnapshot,
    Offer,
    Stretch,
    TopFlow,
    Waiting,
    decide,
    effective_weight,
)

BIG = 10**9
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Weights: round values, thirds and tenths that floats cannot hold exactly, and
# arbitrary positive floats.
weights_st = st.one_of(
    st.sampled_from([1.0, 2.0, 0.5, 1.5, 3.0, 0.1, 0.3, 1 / 3, 2 / 3, 0.7]),
    st.floats(min_value=0.01, max_value=50.0, allow_nan=False, allow_infinity=False),
)


def exact(w: float) -> Fraction:
    return Fraction(w)


def check_within_one(counts: Mapping[str, int], weights: Mapping[str, float], total: int) -> None:
    w_sum = sum(exact(w) for w in weights.values())
    for aid, w in weights.items():
        share = total * exact(w) / w_sum
        assert abs(counts.get(aid, 0) - share) < 1, (aid, counts.get(aid, 0), float(share), total)


def free_astrologers(weights: Mapping[str, float], **kw: object) -> tuple[Astrologer, ...]:
    return tuple(Astrologer(aid, w, BIG, 0, **kw) for aid, w in weights.items())  # type: ignore[arg-type]


def run_one_at_a_time(
    astrologers: tuple[Astrologer, ...], steps: int, stretch: Stretch = Stretch(), start: int = 0, **kw: object
) -> tuple[list[str], Stretch]:
    got = []
    for k in range(start, start + steps):
        d = decide(FlowSnapshot(astrologers, (Waiting(f"r{k}", k),), {}, stretch=stretch, **kw))  # type: ignore[arg-type]
        got.append(d.offers[0].astrologer_id)
        stretch = d.stretch
    return got, stretch


# --------------------------------------------------------------------------- fairness


@SETTINGS
@given(
    weights=st.lists(weights_st, min_size=1, max_size=9),
    steps=st.integers(1, 120),
    idle=st.randoms(use_true_random=False),
)
def test_counts_stay_strictly_within_one_of_the_fair_share(weights: list[float], steps: int, idle: random.Random) -> None:
    table = {f"a{k}": w for k, w in enumerate(weights)}
    astrologers = tuple(
        Astrologer(aid, w, BIG, 0, idle_since_ms=idle.randrange(5)) for aid, w in table.items()
    )
    counts = dict.fromkeys(table, 0)
    stretch = Stretch()
    for k in range(steps):
        d = decide(FlowSnapshot(astrologers, (Waiting(f"r{k}", k),), {}, stretch=stretch))
        counts[d.offers[0].astrologer_id] += 1
        stretch = d.stretch
        assert stretch.total == k + 1  # the set never changed: one stretch throughout
        check_within_one(counts, table, k + 1)
    assert dict(stretch.counts) == {a: c for a, c in counts.items() if c}


@SETTINGS
@given(weights=st.lists(weights_st, min_size=1, max_size=8), batches=st.lists(st.integers(1, 12), min_size=1, max_size=8))
def test_bound_holds_when_requests_come_in_batches(weights: list[float], batches: list[int]) -> None:
    table = {f"a{k}": w for k, w in enumerate(weights)}
    astrologers = free_astrologers(table)
    counts = dict.fromkeys(table, 0)
    stretch, seq = Stretch(), 0
    for size in batches:
        general = tuple(Waiting(f"r{seq + j}", seq + j) for j in range(size))
        seq += size
        d = decide(FlowSnapshot(astrologers, general, {}, stretch=stretch))
        assert len(d.offers) == size
        for offer in d.offers:
            counts[offer.astrologer_id] += 1
        stretch = d.stretch
        check_within_one(counts, table, seq)


@SETTINGS
@given(
    before=st.lists(weights_st, min_size=1, max_size=6),
    joiners=st.lists(weights_st, min_size=1, max_size=3),
    warm_up=st.integers(0, 60),
    after=st.integers(1, 60),
)
def test_joiner_gets_no_catch_up_burst(before: list[float], joiners: list[float], warm_up: int, after: int) -> None:
    old = {f"a{k}": w for k, w in enumerate(before)}
    new = {f"j{k}": w for k, w in enumerate(joiners)}
    _, stretch = run_one_at_a_time(free_astrologers(old), warm_up)
    # The joiners come online (or back from a break): counting starts again, level.
    both = {**old, **new}
    got, _ = run_one_at_a_time(free_astrologers(both), after, stretch, start=warm_up)
    # Over every prefix of the next `after` decisions, joiners and old members alike
    # hold within 1 of their share of that prefix: no burst, no debt carried over.
    for k in range(1, after + 1):
        prefix = got[:k]
        check_within_one({aid: prefix.count(aid) for aid in both}, both, k)


# --------------------------------------------------------------------------- top flow


@SETTINGS
@given(
    weights=st.lists(st.tuples(weights_st, st.booleans()), min_size=1, max_size=8),
    steps=st.integers(1, 40),
)
def test_top_flow_off_keeps_general_requests_from_tops(weights: list[tuple[float, bool]], steps: int) -> None:
    astrologers = tuple(Astrologer(f"a{k}", w, BIG, 0, is_top=top) for k, (w, top) in enumerate(weights))
    tops = {a.id for a in astrologers if a.is_top}
    general = tuple(Waiting(f"g{k}", k) for k in range(steps))
    direct = {aid: (Waiting(f"d-{aid}", 10_000),) for aid in tops}
    d = decide(FlowSnapshot(astrologers, general, direct, top_flow=TopFlow.OFF))
    assert not any(o.astrologer_id in tops for o in d.offers if not o.direct)
    assert {o.astrologer_id for o in d.offers if o.direct} == tops
    if len(tops) == len(astrologers):
        assert not [o for o in d.offers if not o.direct]
    else:
        assert len([o for o in d.offers if not o.direct]) == steps


@SETTINGS
@given(
    weights=st.lists(st.tuples(weights_st, st.booleans()), min_size=1, max_size=7),
    boost=st.sampled_from([1.5, 2.0, 3.0, 0.5, 2.5]),
    steps=st.integers(1, 80),
)
def test_boost_follows_effective_weights(weights: list[tuple[float, bool]], boost: float, steps: int) -> None:
    astrologers = tuple(Astrologer(f"a{k}", w, BIG, 0, is_top=top) for k, (w, top) in enumerate(weights))
    effective = {a.id: a.weight * boost if a.is_top else a.weight for a in astrologers}
    got, stretch = run_one_at_a_time(astrologers, steps, top_flow=TopFlow.BOOST, boost=boost)
    assert dict(stretch.members) == effective
    for k in range(1, steps + 1):
        check_within_one({aid: got[:k].count(aid) for aid in effective}, effective, k)


@SETTINGS
@given(b=st.sampled_from([2.0, 3.0, 1.5]), steps=st.integers(1, 120))
def test_boosted_top_gets_b_times_a_normal_one(b: float, steps: int) -> None:
    astrologers = (Astrologer("top", 1.0, BIG, 0, is_top=True), Astrologer("normal", 1.0, BIG, 0))
    got, _ = run_one_at_a_time(astrologers, steps, top_flow=TopFlow.BOOST, boost=b)
    top, normal = got.count("top"), got.count("normal")
    # Each is within 1 of its share (b and 1 parts of b + 1), so top - b * normal
    # is within 1 + b of zero.
    assert abs(top - b * normal) < 1 + b
    check_within_one({"top": top, "normal": normal}, {"top": b, "normal": 1.0}, steps)


# --------------------------------------------------------------------------- random snapshots


def reference_decide(snapshot: FlowSnapshot) -> Decision:
    """SPEC §5 read literally: O(n) per request, exact fractions, no heaps."""
    by_id = {a.id: a for a in snapshot.astrologers}
    room = {a.id: a.capacity - a.load for a in snapshot.astrologers if a.load < a.capacity}
    offers: list[Offer] = []
    served_at: dict[str, int] = {}
    for aid in sorted(snapshot.direct):
        for waiting in snapshot.direct[aid]:
            if room.get(aid, 0) <= 0:
                break
            if aid in waiting.excluded:
                continue
            offers.append(Offer(waiting.request_id, aid, True))
            room[aid] -= 1
            served_at[aid] = len(offers)

    def eligible() -> tuple[tuple[str, float], ...]:
        out = []
        for a in snapshot.astrologers:
            w = effective_weight(a, snapshot.top_flow, snapshot.boost)
            if room.get(a.id, 0) > 0 and w is not None:
                out.append((a.id, w))
        return tuple(sorted(out))

    def idle_rank(aid: str) -> tuple[int, int]:
        return (1, served_at[aid]) if aid in served_at else (0, by_id[aid].idle_since_ms)

    members = eligible()
    stretch = snapshot.stretch
    vtime = stretch.vtime
    passes = {a: stretch.passes.get(a, vtime) for a, _ in members}
    if members == stretch.members:
        counts = {a: c for a, c in stretch.counts.items() if c > 0 and a in dict(members)}
        total = stretch.total
    else:
        counts, total = {}, 0
    weight_total = math.fsum(w for _, w in members)  # as flow.py: less each member that leaves
    for waiting in snapshot.general:
        if not members:
            break
        w_sum = sum(exact(w) for _, w in members)
        candidates = [(a, exact(w)) for a, w in members if a not in waiting.excluded]
        if not candidates:
            continue
        if total == 0:
            # A fresh stretch: the smallest virtual finish over the day (floats, as in flow.py).
            weight = dict(members)
            aid = min(candidates, key=lambda p: (passes[p[0]] + 1.0 / weight[p[0]], idle_rank(p[0]), p[0]))[0]
        else:
            not_ahead = [(a, w) for a, w in candidates if counts.get(a, 0) <= total * w / w_sum]
            pool = not_ahead or candidates
            aid = min(pool, key=lambda p: ((counts.get(p[0], 0) + 1) / p[1], idle_rank(p[0]), p[0]))[0]
        offers.append(Offer(waiting.request_id, aid, False))
        passes[aid] += 1.0 / dict(members)[aid]
        vtime += 1.0 / weight_total
        room[aid] -= 1
        served_at[aid] = len(offers)
        counts[aid] = counts.get(aid, 0) + 1
        total += 1
        now = eligible()
        if now != members:
            for gone in set(dict(members)) - set(dict(now)):
                del passes[gone]
                weight_total -= dict(members)[gone]
            members, counts, total = now, {}, 0
    return Decision(tuple(offers), Stretch(members, counts, total, vtime, passes))


def normalised(d: Decision) -> tuple[tuple[Offer, ...], tuple, dict[str, int], int, float, dict[str, float]]:
    s = d.stretch
    return d.offers, s.members, {a: c for a, c in s.counts.items() if c}, s.total, s.vtime, dict(s.passes)


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[FlowSnapshot, FlowSnapshot]:
    """A snapshot, and a second one whose stretch comes from deciding the first."""
    n = draw(st.integers(1, 8))
    ids = [f"a{k}" for k in range(n)]
    astrologers = []
    for aid in ids:
        capacity = draw(st.integers(1, 4))
        astrologers.append(
            Astrologer(
                aid,
                draw(weights_st),
                capacity,
                draw(st.integers(0, capacity)),
                is_top=draw(st.booleans()),
                flow_enabled=draw(st.booleans() | st.just(True)),
                idle_since_ms=draw(st.integers(0, 3)),
            )
        )
    rng = draw(st.randoms(use_true_random=False))
    rng.shuffle(astrologers)
    some_ids = st.frozensets(st.sampled_from(ids + ["gone"]), max_size=n + 1)
    general = tuple(
        Waiting(f"g{k}", k, draw(some_ids) if draw(st.booleans()) else frozenset())
        for k in range(draw(st.integers(0, 14)))
    )
    direct: dict[str, tuple[Waiting, ...]] = {}
    for aid in draw(st.lists(st.sampled_from(ids + ["gone"]), max_size=4, unique=True)):
        direct[aid] = tuple(
            Waiting(f"d-{aid}-{k}", 100 + k, draw(some_ids) if draw(st.booleans()) else frozenset())
            for k in range(draw(st.integers(0, 4)))
        )
    top_flow = draw(st.sampled_from(list(TopFlow)))
    boost = draw(st.sampled_from([2.0, 1.5, 3.0]))
    # What the day has given so far: some astrologers owed (a pass behind the
    # virtual time), some ahead, the rest joining now.
    vtime = draw(st.sampled_from([0.0, 1.0, 2.5]))
    offsets = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 1.0])
    history = Stretch(vtime=vtime, passes={aid: vtime + draw(offsets) for aid in ids if draw(st.booleans())})
    first = FlowSnapshot(tuple(astrologers), general, direct, top_flow, boost, history)
    # The same astrologers a moment later, with the load back where it was: the
    # stretch from the first decision carries over when the set is unchanged.
    prior = decide(FlowSnapshot(tuple(astrologers), general, {}, top_flow, boost, history)).stretch
    second = FlowSnapshot(tuple(astrologers), general, direct, top_flow, boost, prior)
    return first, second


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=snapshots())
def test_decide_agrees_with_the_reference(pair: tuple[FlowSnapshot, FlowSnapshot]) -> None:
    for snapshot in pair:
        assert normalised(decide(snapshot)) == normalised(reference_decide(snapshot))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=snapshots())
def test_invariants_on_random_snapshots(pair: tuple[FlowSnapshot, FlowSnapshot]) -> None:
    for snapshot in pair:
        d = decide(snapshot)
        by_id = {a.id: a for a in snapshot.astrologers}
        given_to: dict[str, int] = {}
        for o in d.offers:
            given_to[o.astrologer_id] = given_to.get(o.astrologer_id, 0) + 1
        # Capacity is never exceeded; only online astrologers get offers.
        for aid, k in given_to.items():
            assert aid in by_id
            assert by_id[aid].load + k <= by_id[aid].capacity
        # Each request at most once; never to an astrologer it excludes.
        requests = {w.request_id: w for w in snapshot.general}
        for line in snapshot.direct.values():
            requests.update({w.request_id: w for w in line})
        assert len({o.request_id for o in d.offers}) == len(d.offers)
        for o in d.offers:
            assert o.astrologer_id not in requests[o.request_id].excluded
        # Direct lines: to their own astrologer, a prefix of the offerable ones.
        for aid, line in snapshot.direct.items():
            offered = [o.request_id for o in d.offers if o.direct and o.astrologer_id == aid]
            offerable = [w.request_id for w in line if aid not in w.excluded]
            assert offered == offerable[: len(offered)]
            if aid in by_id:
                room = max(by_id[aid].capacity - by_id[aid].load, 0)
                assert len(offered) == min(room, len(offerable))
            else:
                assert offered == []
        assert all(o.astrologer_id == aid for aid, line in snapshot.direct.items()
                   for w in line for o in d.offers if o.request_id == w.request_id)
        # General line, oldest first: a request passed over while an astrologer who
        # later took a newer request was still available must have excluded it.
        general = [o for o in d.offers if not o.direct]
        order = {w.request_id: k for k, w in enumerate(snapshot.general)}
        assert [order[o.request_id] for o in general] == sorted(order[o.request_id] for o in general)
        taken = {o.request_id for o in general}
        for o in general:
            for w in snapshot.general[: order[o.request_id]]:
                if w.request_id not in taken:
                    assert o.astrologer_id in w.excluded
        # No general offer to a top with top_flow off, or to one with flow disabled.
        for o in general:
            assert effective_weight(by_id[o.astrologer_id], snapshot.top_flow, snapshot.boost) is not None
        # Deterministic, and blind to the order astrologers come in.
        assert decide(snapshot) == d
        shuffled = FlowSnapshot(tuple(reversed(snapshot.astrologers)), snapshot.general, snapshot.direct,
                                snapshot.top_flow, snapshot.boost, snapshot.stretch)
        assert normalised(decide(shuffled)) == normalised(d)


@SETTINGS
@given(
    weights=st.lists(weights_st, min_size=2, max_size=8),
    excluded_share=st.floats(0.0, 0.5),
    rng=st.randoms(use_true_random=False),
    steps=st.integers(1, 60),
)
def test_exclusions_are_respected_over_many_decisions(
    weights: list[float], excluded_share: float, rng: random.Random, steps: int
) -> None:
    table = {f"a{k}": w for k, w in enumerate(weights)}
    astrologers = free_astrologers(table)
    stretch = Stretch()
    for k in range(steps):
        excluded = frozenset(aid for aid in table if rng.random() < excluded_share)
        d = decide(FlowSnapshot(astrologers, (Waiting(f"r{k}", k, excluded),), {}, stretch=stretch))
        if len(excluded) == len(table):
            assert d.offers == ()
        else:
            (offer,) = d.offers
            assert offer.astrologer_id not in excluded
        stretch = d.stretch
