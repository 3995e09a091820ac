"""`astroq simulate`: replay a synthetic day through the flow algorithm and baselines.

A discrete-event simulation (one heap of timed events), no Redis and no network:

* requests arrive as a Poisson process whose rate follows a daily curve that
  peaks in the evening; a share of them name an astrologer (direct requests);
* session lengths are log-normal, scaled so the astrologers' capacity is used to
  about `--load` over the day;
* astrologers have weights, capacities, one shift a day with short breaks, a
  chance to decline an offer and a chance to miss it (the offer expires after
  `--offer-timeout`); a declined or expired general request goes back to the head
  of the line and is never offered to that astrologer again; after `--max-missed`
  expiries in a row the astrologer goes on break (SPEC §5);
* the admin flips `top_flow` during the day (on, boost, on, off, on).

The same day is replayed once per policy. `astroq` asks `matcher.flow.decide` for
every decision, exactly as the matcher does (with the free astrologers and the head
of each line in the snapshot). The baselines replace only the choice of astrologer
for a general request; eligibility, direct lines and everything else are shared:

* `least_loaded`: fewest general offers so far today;
* `weighted_random`: random, in proportion to effective weight;
* `round_robin`: the next eligible astrologer after the last one chosen;
* `longest_idle`: the one whose last offer is oldest.

Random draws (offer outcomes, response times, session lengths) are tied to the
request and attempt, not to the astrologer or the policy, so policies are compared
on the same day.

Measures, per policy. A general offer is an assignment. Each one entitles every
astrologer eligible at that instant (free and flow-eligible; per-request exclusions
aside) to ``w_i / W`` of it, so an astrologer's *target* is what a perfectly fair flow
would have given it while it was free; *lag* = target - actual (positive: behind).
Jain's index is taken over actual / target. *Stretch lag* is SPEC §5's own measure:
the largest ``|count - share|`` within any stretch (the eligible set unchanged,
counts since it last changed). Waits run from arrival to acceptance.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import heapq
import itertools
import json
import math
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from matcher.flow import Astrologer, FlowSnapshot, Stretch, TopFlow, Waiting, decide

DAY_S = 86_400.0
PEAK_HOUR = 20.5  # the evening peak of the daily curve
POLICIES = ("astroq", "least_loaded", "weighted_random", "round_robin", "longest_idle")
FLOW_SCHEDULE: tuple[tuple[float, TopFlow], ...] = (
    (0.0, TopFlow.ON),
    (10 * 3600.0, TopFlow.BOOST),
    (15 * 3600.0, TopFlow.ON),
    (19 * 3600.0, TopFlow.OFF),
    (22 * 3600.0, TopFlow.ON),
)
WEIGHTS = (0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 3.0)  # dyadic, so float sums stay exact
CAPACITIES = (1, 1, 1, 2, 2, 3, 4)
SESSION_SIGMA = 0.8  # log-normal shape of session lengths
PENALTY_BREAK_S = 600.0  # how long a break for missed offers lasts
ATTEMPT_DRAWS = 4  # pre-drawn outcomes per request; later attempts reuse them

# Plain ints rather than enums: the event loop compares them millions of times.
OFFLINE, ONLINE, BREAK = 0, 1, 2
WAITING, OFFERED, ASSIGNED, CANCELLED = 0, 1, 2, 3
EV_ANSWER, EV_SESSION_END, EV_STATUS, EV_PENALTY_END, EV_FLOW = range(5)
ACCEPT, DECLINE, EXPIRE = 0, 1, 2


# --------------------------------------------------------------------------- the day


@dataclass(frozen=True)
class AstrologerSpec:
    id: str
    weight: float
    capacity: int
    is_top: bool
    flow_enabled: bool
    p_decline: float
    p_miss: float
    status_changes: tuple[tuple[float, int], ...]  # (time_s, OFFLINE|ONLINE|BREAK), sorted
    popularity: float  # how often users name it in a direct request


@dataclass(frozen=True)
class Scenario:
    astrologers: tuple[AstrologerSpec, ...]
    arrival_s: tuple[float, ...]  # sorted
    direct_u: tuple[float, ...]  # < 0: a general request; else picks the named astrologer
    session_s: tuple[float, ...]
    outcome_u: tuple[float, ...]  # ATTEMPT_DRAWS per request: [r * ATTEMPT_DRAWS + attempt]
    response_s: tuple[float, ...]  # seconds to accept or decline, laid out the same way
    offer_timeout_s: float
    max_missed: int
    max_wait_s: float
    boost: float
    mean_session_s: float


DEMAND_PEAK = 1.9  # the curve's maximum, the envelope for rejection sampling


def demand(t_s: float) -> float:
    """Relative arrival rate at time of day `t_s`: peak 1.9 at 20:30, low 0.5 near 06:30."""
    theta = 2 * math.pi * (t_s / 3600.0 - PEAK_HOUR) / 24.0
    return 1.0 + 0.7 * math.cos(theta) + 0.2 * math.cos(2 * theta)


def _sample_times(rng: random.Random, count: int) -> list[float]:
    # Conditioned on its count, a Poisson process's arrivals are independent draws
    # from the normalised rate: sample them by rejection.
    rand = rng.random
    out: list[float] = []
    while len(out) < count:
        t = rand() * DAY_S
        if rand() * DEMAND_PEAK <= demand(t):
            out.append(t)
    return out


def _status_changes(shift: tuple[float, float], breaks: list[tuple[float, float]]) -> tuple[tuple[float, int], ...]:
    """Status over one day (wrapping at midnight) from a shift and breaks inside it."""

    def segments(start: float, end: float) -> list[tuple[float, float]]:
        length = end - start
        start %= DAY_S
        end = start + length
        if end <= DAY_S:
            return [(start, end)]
        return [(start, DAY_S), (0.0, end - DAY_S)]

    on = segments(*shift)
    off = [seg for b in breaks for seg in segments(*b)]
    points = sorted({0.0, *(p for s in on + off for p in s if p < DAY_S)})
    changes: list[tuple[float, int]] = []
    for i, p in enumerate(points):
        mid = (p + (points[i + 1] if i + 1 < len(points) else DAY_S)) / 2
        status = OFFLINE
        if any(a <= mid < b for a, b in on):
            status = BREAK if any(a <= mid < b for a, b in off) else ONLINE
        if not changes or changes[-1][1] != status:
            changes.append((p, status))
    return tuple(changes)


def make_scenario(
    *,
    requests: int,
    astrologers: int,
    seed: int,
    direct_share: float = 0.15,
    offer_timeout_s: float = 15.0,
    max_missed: int = 3,
    max_wait_s: float = 1800.0,
    load: float = 0.7,
    boost: float = 2.0,
    capacity: int | None = None,
) -> Scenario:
    """A synthetic day, fully determined by its arguments.

    `capacity` gives every astrologer that capacity instead of a mix of 1 to 4.
    """
    rng = random.Random(seed)
    specs: list[AstrologerSpec] = []
    capacity_s = 0.0
    width = max(3, len(str(astrologers - 1)))
    for i in range(astrologers):
        length_s = rng.uniform(5, 9) * 3600
        mid = _sample_times(rng, 1)[0]
        shift = (mid - length_s / 2, mid + length_s / 2)
        breaks = []
        for _ in range(int(length_s // (3 * 3600))):
            b_start = shift[0] + rng.uniform(0.1, 0.85) * length_s
            breaks.append((b_start, b_start + rng.uniform(10, 20) * 60))
        changes = _status_changes(shift, breaks)
        online_s = sum(
            (changes[k + 1][0] if k + 1 < len(changes) else DAY_S) - t
            for k, (t, status) in enumerate(changes)
            if status == ONLINE
        )
        weight = rng.choice(WEIGHTS)
        slots = rng.choice(CAPACITIES)  # drawn either way, so --capacity keeps the rest of the day
        if capacity is not None:
            slots = capacity
        is_top = rng.random() < 0.1
        capacity_s += slots * online_s
        specs.append(
            AstrologerSpec(
                id=f"a{i:0{width}d}",
                weight=weight,
                capacity=slots,
                is_top=is_top,
                flow_enabled=rng.random() >= 0.04,
                p_decline=rng.uniform(0.01, 0.08),
                p_miss=rng.uniform(0.0, 0.04),
                status_changes=changes,
                popularity=weight * (3.0 if is_top else 1.0),
            )
        )
    arrivals = sorted(_sample_times(rng, requests))
    mean_session_s = load * capacity_s / max(requests, 1)
    mu = math.log(mean_session_s) - SESSION_SIGMA**2 / 2
    rand = rng.random
    return Scenario(
        astrologers=tuple(specs),
        arrival_s=tuple(arrivals),
        direct_u=tuple(rand() if rand() < direct_share else -1.0 for _ in arrivals),
        session_s=tuple(rng.lognormvariate(mu, SESSION_SIGMA) for _ in arrivals),
        outcome_u=tuple(rand() for _ in range(requests * ATTEMPT_DRAWS)),
        response_s=tuple(1.0 + 9.0 * rand() for _ in range(requests * ATTEMPT_DRAWS)),
        offer_timeout_s=offer_timeout_s,
        max_missed=max_missed,
        max_wait_s=max_wait_s,
        boost=boost,
        mean_session_s=mean_session_s,
    )


# --------------------------------------------------------------------------- one run


class _Run:
    """One policy over one scenario.

    Astrologers and requests are list indices; the ids `decide` sees are the
    scenario's astrologer ids (zero-padded, so index order is id order) and the
    request index as a string. The request index doubles as its place in line.
    """

    def __init__(self, scenario: Scenario, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.sc = scenario
        self.policy = policy
        self.astroq = policy == "astroq"
        self.heap_policy = policy in ("least_loaded", "longest_idle")
        self.outcome_u = scenario.outcome_u
        self.response_s = scenario.response_s
        self.offer_timeout_s = scenario.offer_timeout_s
        specs = scenario.astrologers
        n = self.n = len(specs)
        self.specs = specs
        self.capacity = [s.capacity for s in specs]
        self.p_decline = [s.p_decline for s in specs]
        self.p_fail = [s.p_decline + s.p_miss for s in specs]  # declined or missed
        self.index = {s.id: i for i, s in enumerate(specs)}
        self.max_capacity = max(self.capacity, default=1)
        self.max_popularity = max((s.popularity for s in specs), default=1.0)
        self.max_weight = max((s.weight for s in specs), default=1.0) * max(scenario.boost, 1.0)
        self.now = 0.0
        self.top_flow = TopFlow.ON
        self.events: list[tuple[float, int, int, int, int]] = []
        self.event_seq = itertools.count()  # ties in time go first come, first served
        # astrologers
        self.status = [OFFLINE] * n
        self.scheduled = [OFFLINE] * n  # status from the shift plan, before penalty breaks
        self.penalty_until = [0.0] * n
        self.load = [0] * n  # open offers plus sessions
        self.idle_ms = [0] * n
        self.missed = [0] * n
        self.gen_weight: list[float | None] = [None] * n  # effective weight under the current top_flow
        self.eff: list[float | None] = [None] * n  # effective weight while eligible, else None
        self.open_offers: list[set[int]] = [set() for _ in range(n)]
        self.direct_line: list[deque[int]] = [deque() for _ in range(n)]
        self.direct_waiting = [0] * n
        self.free: set[int] = set()  # online with a free slot
        self.elig: set[int] = set()  # free and taking general requests
        self.direct_ready: set[int] = set()  # free, with someone in its own line
        self.present: list[int] = []  # online or on break: may be named in a request
        self.present_pos: dict[int, int] = {}
        self.weight_sum = 0.0  # of the eligible; weights are dyadic, so this stays exact
        # astroq: the free astrologers in id order, with their snapshot objects
        self.free_sorted: list[int] = []
        self.free_objs: list[Astrologer | None] = []
        self.stale: set[int] = set()
        self.stretch = Stretch()
        # baselines
        self.rr_next = 0
        self.heap: list[tuple[int, ...]] = []
        self.pick_rng = random.Random(0x5EED)
        self.elig_list: list[int] = []  # weighted_random: the eligible, in any order
        self.elig_pos: dict[int, int] = {}
        self.elig_sorted: list[int] = []  # round_robin: the eligible, in id order
        # measures
        self.general_offers = [0] * n
        self.direct_offers = [0] * n
        self.entitled = [0.0] * n
        self.joined_at = [0.0] * n
        self.acc = 0.0  # sum over general offers of 1 / W
        self.session_s = [0.0] * n
        self.online_s = [0.0] * n
        self.online_since = [0.0] * n
        self.waits_general: list[float] = []
        self.waits_direct: list[float] = []
        self.cancelled: dict[str, int] = {}
        self.decide_calls = 0
        # SPEC §5 stretch tracker; eligible sets are compared by a hash of (id, weight) pairs
        self.hash_of = [random.Random(i).getrandbits(62) for i in range(n)]
        self.set_hash = 0
        self.class_count: dict[float, int] = {}
        self.tr_hash = -1
        self.tr_counts: dict[int, int] = {}
        self.tr_weight: dict[int, float] = {}
        self.tr_total = 0
        self.tr_weight_sum = 0.0
        self.tr_classes: dict[float, int] = {}
        self.tr_max_weight = 0.0
        self.stretch_lag = 0.0
        # requests
        m = len(scenario.arrival_s)
        self.arrival_s = scenario.arrival_s
        self.state = [WAITING] * m
        self.attempts = [0] * m
        self.excluded: list[set[int] | None] = [None] * m
        self.wobj: list[Waiting | None] = [None] * m
        self.target = [-1] * m  # the named astrologer of a direct request
        self.general_q: deque[int] = deque()  # first-time general requests, in arrival order
        self.returned: set[int] = set()  # general requests back from an offer
        self.waiting_general = 0
        # offers
        self.offer_req: list[int] = []
        self.offer_astro: list[int] = []
        self.offer_live: list[bool] = []

    # ------------------------------------------------------------------ events

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        heapq.heappush(self.events, (t, next(self.event_seq), kind, a, b))

    def run(self) -> dict[str, Any]:
        for i, spec in enumerate(self.specs):
            for t, status in spec.status_changes:
                self.push(t, EV_STATUS, i, status)
        modes = list(TopFlow)
        for t, mode in FLOW_SCHEDULE:
            self.push(t, EV_FLOW, modes.index(mode))
        self.set_flow(TopFlow.ON)
        arrivals = self.arrival_s
        count = len(arrivals)
        next_arrival = 0
        events, load = self.events, self.load
        pop = heapq.heappop
        arrive, answer, refresh, match = self.arrive, self.answer, self.refresh, self.match
        elig, direct_ready = self.elig, self.direct_ready
        while events or next_arrival < count:
            if next_arrival < count and (not events or arrivals[next_arrival] <= events[0][0]):
                self.now = arrivals[next_arrival]
                arrive(next_arrival)
                next_arrival += 1
            else:
                t, _, kind, a, b = pop(events)
                self.now = t
                if kind == EV_ANSWER:
                    answer(a, b)
                elif kind == EV_SESSION_END:
                    load[a] -= 1
                    refresh(a)
                elif kind == EV_STATUS:
                    self.scheduled[a] = b
                    self.set_status(a)
                elif kind == EV_PENALTY_END:
                    self.set_status(a)
                else:
                    self.set_flow(modes[a])
            if (self.waiting_general and elig) or direct_ready:
                match()
        return self.report()

    def arrive(self, r: int) -> None:
        u = self.sc.direct_u[r]
        if u >= 0 and self.present:
            i = self.pick_named(u)
            self.target[r] = i
            self.direct_line[i].append(r)
            self.direct_waiting[i] += 1
            if i in self.free:
                self.direct_ready.add(i)
        else:
            self.general_q.append(r)
            self.waiting_general += 1

    def pick_named(self, u: float) -> int:
        """The astrologer a direct request names: one present, by popularity.

        Rejection sampling seeded with the request's own draw, so the choice depends
        only on the request and on who is present.
        """
        rng = random.Random(u)
        present, specs, top = self.present, self.specs, self.max_popularity
        while True:
            i = present[int(rng.random() * len(present))]
            if rng.random() * top <= specs[i].popularity:
                return i

    def answer(self, token: int, outcome: int) -> None:
        if not self.offer_live[token]:
            return  # withdrawn when the astrologer went offline
        self.offer_live[token] = False
        r, i = self.offer_req[token], self.offer_astro[token]
        self.open_offers[i].discard(token)
        if outcome == ACCEPT:
            self.missed[i] = 0
            self.state[r] = ASSIGNED
            wait_s = self.now - self.arrival_s[r]
            (self.waits_direct if self.target[r] >= 0 else self.waits_general).append(wait_s)
            length = self.sc.session_s[r]
            self.session_s[i] += length
            self.push(self.now + length, EV_SESSION_END, i)
            return  # the offer's slot becomes the session's
        self.load[i] -= 1
        if outcome == DECLINE:
            self.missed[i] = 0
            self.give_back(r, i, "declined")
        else:
            self.missed[i] += 1
            self.give_back(r, i, "timeout")
            if self.missed[i] >= self.sc.max_missed and self.status[i] == ONLINE:
                # SPEC §5: too many expired offers in a row put it on break.
                self.missed[i] = 0
                self.penalty_until[i] = self.now + PENALTY_BREAK_S
                self.push(self.penalty_until[i], EV_PENALTY_END, i)
                self.set_status(i)
        self.refresh(i)

    def give_back(self, r: int, i: int, reason: str) -> None:
        """A declined, expired or withdrawn offer (SPEC §5)."""
        if self.target[r] >= 0:
            self.cancel(r, reason)
            return
        excluded = self.excluded[r]
        if excluded is None:
            excluded = self.excluded[r] = set()
        excluded.add(i)
        self.wobj[r] = None
        self.state[r] = WAITING
        self.returned.add(r)
        self.waiting_general += 1

    def cancel(self, r: int, reason: str) -> None:
        self.state[r] = CANCELLED
        self.cancelled[reason] = self.cancelled.get(reason, 0) + 1

    def set_flow(self, mode: TopFlow) -> None:
        self.top_flow = mode
        boost = self.sc.boost
        for i, spec in enumerate(self.specs):
            weight: float | None = spec.weight
            if not spec.flow_enabled or (spec.is_top and mode == TopFlow.OFF):
                weight = None
            elif spec.is_top and mode == TopFlow.BOOST:
                weight = spec.weight * boost
            if weight != self.gen_weight[i]:
                self.gen_weight[i] = weight
                self.refresh(i)

    def set_status(self, i: int) -> None:
        status = self.scheduled[i]
        if status == ONLINE and self.now < self.penalty_until[i]:
            status = BREAK
        old = self.status[i]
        if status == old:
            return
        if old == ONLINE:
            self.online_s[i] += self.now - self.online_since[i]
        if status == ONLINE:
            self.online_since[i] = self.now
        self.status[i] = status
        if status != OFFLINE and i not in self.present_pos:
            self.present_pos[i] = len(self.present)
            self.present.append(i)
        elif status == OFFLINE and i in self.present_pos:
            pos = self.present_pos.pop(i)
            last = self.present.pop()
            if last != i:
                self.present[pos] = last
                self.present_pos[last] = pos
        if status == OFFLINE:
            # SPEC §5: its open offers go back to the head of their lines and its own
            # line is cancelled.
            for token in sorted(self.open_offers[i]):
                self.offer_live[token] = False
                self.load[i] -= 1
                self.give_back(self.offer_req[token], i, "astrologer_offline")
            self.open_offers[i].clear()
            for r in self.direct_line[i]:
                if self.state[r] == WAITING:
                    self.cancel(r, "astrologer_offline")
            self.direct_line[i].clear()
            self.direct_waiting[i] = 0
        self.refresh(i)

    # ------------------------------------------------------------------ sets

    def refresh(self, i: int) -> None:
        """Recompute i's place in the free, eligible and direct-ready sets after a change."""
        free = self.status[i] == ONLINE and self.load[i] < self.capacity[i]
        free_set = self.free
        if free != (i in free_set):
            if free:
                free_set.add(i)
            else:
                free_set.discard(i)
            if self.astroq:
                fs = self.free_sorted
                pos = bisect.bisect_left(fs, i)
                if free:
                    fs.insert(pos, i)
                    self.free_objs.insert(pos, None)
                else:
                    del fs[pos]
                    del self.free_objs[pos]
        if free:
            if self.astroq:
                self.stale.add(i)
            weight = self.gen_weight[i]
            if self.direct_waiting[i]:
                self.direct_ready.add(i)
        else:
            weight = None
            self.direct_ready.discard(i)
        old = self.eff[i]
        if weight != old:
            if old is not None:
                self.leave(i, old)
            if weight is not None:
                self.join(i, weight)

    def join(self, i: int, weight: float) -> None:
        self.eff[i] = weight
        self.elig.add(i)
        self.weight_sum += weight
        self.joined_at[i] = self.acc
        self.set_hash ^= hash((self.hash_of[i], weight))
        self.class_count[weight] = self.class_count.get(weight, 0) + 1
        policy = self.policy
        if policy == "least_loaded":
            heapq.heappush(self.heap, (self.general_offers[i], self.idle_ms[i], i))
        elif policy == "longest_idle":
            heapq.heappush(self.heap, (self.idle_ms[i], i))
        elif policy == "weighted_random":
            self.elig_pos[i] = len(self.elig_list)
            self.elig_list.append(i)
        elif policy == "round_robin":
            bisect.insort(self.elig_sorted, i)

    def leave(self, i: int, weight: float) -> None:
        self.eff[i] = None
        self.elig.discard(i)
        self.weight_sum -= weight
        self.entitled[i] += weight * (self.acc - self.joined_at[i])
        self.set_hash ^= hash((self.hash_of[i], weight))
        left = self.class_count[weight] - 1
        if left:
            self.class_count[weight] = left
        else:
            del self.class_count[weight]
        if self.policy == "weighted_random":
            pos = self.elig_pos.pop(i)
            last = self.elig_list.pop()
            if last != i:
                self.elig_list[pos] = last
                self.elig_pos[last] = pos
        elif self.policy == "round_robin":
            del self.elig_sorted[bisect.bisect_left(self.elig_sorted, i)]

    # ------------------------------------------------------------------ matching

    def general_head(self) -> Iterator[int]:
        """Waiting general requests, oldest first; ones past the max wait end as timeouts."""
        state, attempts, arrival = self.state, self.attempts, self.arrival_s
        max_wait = self.sc.max_wait_s
        oldest_ok = self.now - max_wait if max_wait else -math.inf
        q = self.general_q
        while q and (state[q[0]] != WAITING or attempts[q[0]]):
            q.popleft()
        back: list[int] = []
        if self.returned:
            back = sorted(r for r in self.returned if state[r] == WAITING)
            self.returned = set(back)
        k = 0
        for r in q:
            if state[r] != WAITING or attempts[r]:
                continue
            while k < len(back) and back[k] < r:
                b = back[k]
                k += 1
                if state[b] == WAITING:
                    if arrival[b] < oldest_ok:
                        self.expire_waiting(b)
                    else:
                        yield b
            if state[r] == WAITING:
                if arrival[r] < oldest_ok:
                    self.expire_waiting(r)
                else:
                    yield r
        for b in back[k:]:
            if state[b] == WAITING:
                if arrival[b] < oldest_ok:
                    self.expire_waiting(b)
                else:
                    yield b

    def expire_waiting(self, r: int) -> None:
        self.waiting_general -= 1
        self.cancel(r, "timeout")

    def direct_head(self, i: int) -> list[int]:
        line, state = self.direct_line[i], self.state
        max_wait = self.sc.max_wait_s
        oldest_ok = self.now - max_wait if max_wait else -math.inf
        while line and state[line[0]] != WAITING:
            line.popleft()
        out: list[int] = []
        room = self.capacity[i] - self.load[i]
        for r in line:
            if len(out) >= room:
                break
            if state[r] == WAITING:
                if self.arrival_s[r] < oldest_ok:
                    self.cancel(r, "timeout")
                    self.direct_waiting[i] -= 1
                    continue
                out.append(r)
        if not self.direct_waiting[i]:
            self.direct_ready.discard(i)
        return out

    def match(self) -> None:
        if self.astroq:
            self.match_astroq()
            return
        if self.direct_ready:
            for i in sorted(self.direct_ready):
                for r in self.direct_head(i):
                    self.offer(r, i)
        if self.waiting_general and self.elig:
            excluded = self.excluded
            for r in self.general_head():
                picked = self.choose(excluded[r])
                if picked is not None:
                    self.offer(r, picked)
                if not self.elig:
                    break
        self.observe_set()

    def waiting(self, r: int) -> Waiting:
        w = self.wobj[r]
        if w is None:
            ex = self.excluded[r]
            specs = self.specs
            w = Waiting(str(r), r, frozenset(specs[i].id for i in ex) if ex else frozenset())
            self.wobj[r] = w
        return w

    def snapshot_astrologers(self) -> tuple[Astrologer, ...]:
        """The free astrologers, in id order, rebuilding only the objects that changed."""
        objs, fs = self.free_objs, self.free_sorted
        for i in self.stale:
            if i in self.free:
                s = self.specs[i]
                objs[bisect.bisect_left(fs, i)] = Astrologer(
                    s.id, s.weight, s.capacity, self.load[i], s.is_top, s.flow_enabled, self.idle_ms[i]
                )
        self.stale.clear()
        return tuple(objs)  # type: ignore[arg-type]

    def match_astroq(self) -> None:
        # The snapshot holds the free astrologers and the heads of the lines: nobody
        # else can take an offer now, so the decision is the same as a full snapshot's.
        direct: dict[str, tuple[Waiting, ...]] = {}
        if self.direct_ready:
            for i in sorted(self.direct_ready):
                head = self.direct_head(i)
                if head:
                    direct[self.specs[i].id] = tuple(self.waiting(r) for r in head)
        general: list[Waiting] = []
        if self.waiting_general and self.elig:
            room = self.max_capacity * len(self.elig) + len(self.returned)
            for r in self.general_head():
                general.append(self.waiting(r))
                if len(general) >= room:
                    break
        if not direct and not general:
            return
        snapshot = FlowSnapshot(
            astrologers=self.snapshot_astrologers(),
            general=tuple(general),
            direct=direct,
            top_flow=self.top_flow,
            boost=self.sc.boost,
            stretch=self.stretch,
        )
        self.decide_calls += 1
        decision = decide(snapshot)
        self.stretch = decision.stretch
        for o in decision.offers:
            self.offer(int(o.request_id), self.index[o.astrologer_id])
        self.observe_set()

    def choose(self, excluded: set[int] | None) -> int | None:
        """A baseline's pick for one general request, among the eligible not excluded."""
        elig = self.elig
        if excluded and len(excluded) >= len(elig) and elig <= excluded:
            return None
        policy = self.policy
        if policy == "least_loaded" or policy == "longest_idle":
            heap, stash = self.heap, []
            counts, idle = self.general_offers, self.idle_ms
            least = policy == "least_loaded"
            chosen = None
            while heap:
                entry = heap[0]
                i = entry[-1]
                current = (counts[i], idle[i], i) if least else (idle[i], i)
                if i not in elig or entry != current:
                    heapq.heappop(heap)
                elif excluded and i in excluded:
                    stash.append(heapq.heappop(heap))
                else:
                    chosen = heapq.heappop(heap)[-1]
                    break
            for entry in stash:
                heapq.heappush(heap, entry)
            return chosen
        if policy == "round_robin":
            ring = self.elig_sorted
            start = bisect.bisect_left(ring, self.rr_next)
            for step in range(len(ring)):
                i = ring[(start + step) % len(ring)]
                if not (excluded and i in excluded):
                    self.rr_next = i + 1
                    return i
            return None
        # weighted_random: rejection sampling against the largest possible weight
        rng, items, eff, top = self.pick_rng, self.elig_list, self.eff, self.max_weight
        while True:
            i = items[int(rng.random() * len(items))]
            if excluded and i in excluded:
                continue
            if rng.random() * top <= eff[i]:  # type: ignore[operator]
                return i

    def offer(self, r: int, i: int) -> None:
        now = self.now
        if self.target[r] >= 0:
            self.direct_waiting[i] -= 1
            self.direct_offers[i] += 1
        else:
            self.waiting_general -= 1
            self.count_general(i)
        self.state[r] = OFFERED
        self.idle_ms[i] = int(now * 1000)
        attempt = self.attempts[r]
        self.attempts[r] = attempt + 1
        token = len(self.offer_req)
        self.offer_req.append(r)
        self.offer_astro.append(i)
        self.offer_live.append(True)
        self.open_offers[i].add(token)
        draw = r * ATTEMPT_DRAWS + attempt % ATTEMPT_DRAWS
        u = self.outcome_u[draw]
        if u < self.p_decline[i]:
            event = (now + self.response_s[draw], next(self.event_seq), EV_ANSWER, token, DECLINE)
        elif u < self.p_fail[i]:
            event = (now + self.offer_timeout_s, next(self.event_seq), EV_ANSWER, token, EXPIRE)
        else:
            event = (now + self.response_s[draw], next(self.event_seq), EV_ANSWER, token, ACCEPT)
        heapq.heappush(self.events, event)
        self.load[i] += 1
        self.refresh(i)
        if self.heap_policy and i in self.elig:
            # Its key changed (idle time; count too for a general offer): enter it again.
            if self.policy == "least_loaded":
                heapq.heappush(self.heap, (self.general_offers[i], self.idle_ms[i], i))
            else:
                heapq.heappush(self.heap, (self.idle_ms[i], i))

    # ------------------------------------------------------------------ measures

    def count_general(self, i: int) -> None:
        """Bookkeeping for one general offer to i: targets and the stretch tracker."""
        weight = self.eff[i]
        if weight is None:
            raise RuntimeError("general offer to an ineligible astrologer")
        self.acc += 1.0 / self.weight_sum
        self.general_offers[i] += 1
        if self.set_hash != self.tr_hash:
            self.observe_set()
        c = self.tr_counts.get(i, 0)
        t = self.tr_total
        share = t * weight / self.tr_weight_sum
        # Its shortfall peaks just before a pick, its excess just after.
        short = share - c
        excess = (c + 1) - share - weight / self.tr_weight_sum
        lag = short if short > excess else excess
        if lag > self.stretch_lag:
            self.stretch_lag = lag
        self.tr_counts[i] = c + 1
        self.tr_weight[i] = weight
        self.tr_total = t + 1

    def observe_set(self) -> None:
        """Like decide, look at the eligible set at each general offer and after each decision."""
        if self.set_hash != self.tr_hash:
            self.close_stretch()
            self.tr_hash = self.set_hash
            self.tr_weight_sum = self.weight_sum
            self.tr_classes = dict(self.class_count)
            self.tr_max_weight = max(self.tr_classes, default=0.0)

    def close_stretch(self) -> None:
        """Shortfalls at the end of a stretch, members never picked in it included."""
        t = self.tr_total
        if not t:
            return
        w_sum = self.tr_weight_sum
        # No count is below 0, so no shortfall exceeds t * (largest weight) / W.
        if t * self.tr_max_weight / w_sum > self.stretch_lag:
            touched: dict[float, int] = {}
            worst = self.stretch_lag
            for i, c in self.tr_counts.items():
                w = self.tr_weight[i]
                touched[w] = touched.get(w, 0) + 1
                worst = max(worst, t * w / w_sum - c)
            untouched = [w for w, k in self.tr_classes.items() if k > touched.get(w, 0)]
            if untouched:
                worst = max(worst, t * max(untouched) / w_sum)
            self.stretch_lag = worst
        self.tr_counts = {}
        self.tr_weight = {}
        self.tr_total = 0

    def report(self) -> dict[str, Any]:
        for i in list(self.elig):
            self.entitled[i] += self.eff[i] * (self.acc - self.joined_at[i])  # type: ignore[operator]
        self.close_stretch()
        for i in range(self.n):
            if self.status[i] == ONLINE:
                self.online_s[i] += self.now - self.online_since[i]
        total = sum(self.general_offers)
        rows: list[dict[str, Any]] = []
        ratios = []
        for i, spec in enumerate(self.specs):
            target = self.entitled[i]
            actual = self.general_offers[i]
            cap_s = spec.capacity * self.online_s[i]
            rows.append(
                {
                    "id": spec.id,
                    "target": target,
                    "actual": actual,
                    "target_share": target / total if total else 0.0,
                    "actual_share": actual / total if total else 0.0,
                    "lag": target - actual,
                    "direct": self.direct_offers[i],
                    "utilisation": self.session_s[i] / cap_s if cap_s else 0.0,
                }
            )
            if target >= 1.0:
                ratios.append(actual / target)
        jain = sum(ratios) ** 2 / (len(ratios) * sum(x * x for x in ratios)) if ratios else 1.0
        return {
            "policy": self.policy,
            "jain": jain,
            "max_lag": max((abs(row["lag"]) for row in rows), default=0.0),
            "stretch_lag": self.stretch_lag,
            "wait_p50_s": percentile(self.waits_general, 50),
            "wait_p95_s": percentile(self.waits_general, 95),
            "wait_p99_s": percentile(self.waits_general, 99),
            "direct_wait_p50_s": percentile(self.waits_direct, 50),
            "direct_wait_p95_s": percentile(self.waits_direct, 95),
            "direct_wait_p99_s": percentile(self.waits_direct, 99),
            "general_offers": total,
            "assigned": len(self.waits_general) + len(self.waits_direct),
            "cancelled": dict(sorted(self.cancelled.items())),
            "unserved": sum(1 for s in self.state if s == WAITING),
            "decide_calls": self.decide_calls,
            "wait_quantiles_s": quantiles(self.waits_general),
            "direct_wait_quantiles_s": quantiles(self.waits_direct),
            "astrologers": rows,
        }


def percentile(values: Sequence[float], pct: float, *, ordered: bool = False) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    if not ordered:
        values = sorted(values)
    rank = max(1, math.ceil(pct * len(values) / 100 - 1e-9))  # 99.9% of 1000 is 999, not 1000
    return values[rank - 1]


QUANTILE_POINTS: tuple[float, ...] = (*range(0, 100), 99.5, 99.9, 100.0)


def quantiles(values: Sequence[float]) -> list[float]:
    """Values at QUANTILE_POINTS percent (0 is the minimum), for the chart."""
    ordered = sorted(values)
    if not ordered:
        return [0.0] * len(QUANTILE_POINTS)
    return [ordered[0]] + [percentile(ordered, q, ordered=True) for q in QUANTILE_POINTS[1:]]


# --------------------------------------------------------------------------- running

_SCENARIO: Scenario | None = None  # handed to forked workers without pickling


def _run_policy(policy: str) -> dict[str, Any]:
    if _SCENARIO is None:
        raise RuntimeError("no scenario to run")
    started = time.perf_counter()
    # The run makes millions of short-lived tuples and no reference cycles worth
    # collecting; the cyclic collector would only rescan the scenario (~5 % of the time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = _Run(_SCENARIO, policy).run()
    finally:
        if collecting:
            gc.enable()
    result["elapsed_s"] = time.perf_counter() - started
    return result


def run_policies(scenario: Scenario, policies: Sequence[str], jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Replay `scenario` once per policy; with jobs > 1, in forked worker processes."""
    global _SCENARIO
    _SCENARIO = scenario
    try:
        if jobs > 1 and len(policies) > 1:
            import multiprocessing

            try:
                context = multiprocessing.get_context("fork")
            except ValueError:
                context = None
            if context is not None:
                with ProcessPoolExecutor(max_workers=min(jobs, len(policies)), mp_context=context) as pool:
                    results = list(pool.map(_run_policy, policies))
                return dict(zip(policies, results))
        return {policy: _run_policy(policy) for policy in policies}
    finally:
        _SCENARIO = None


# --------------------------------------------------------------------------- output


def summary(results: dict[str, dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    """The `--json` document."""
    keys = ("jain", "max_lag", "stretch_lag", "wait_p50_s", "wait_p95_s", "wait_p99_s",
            "direct_wait_p50_s", "direct_wait_p95_s", "direct_wait_p99_s",
            "general_offers", "assigned", "cancelled", "unserved")
    policies = {name: {k: r[k] for k in keys} for name, r in results.items()}
    astrologers = []
    for i, spec in enumerate(scenario.astrologers):
        astrologers.append(
            {
                "id": spec.id,
                "weight": spec.weight,
                "capacity": spec.capacity,
                "is_top": spec.is_top,
                "flow_enabled": spec.flow_enabled,
                "policies": {
                    name: {k: r["astrologers"][i][k] for k in
                           ("target_share", "actual_share", "lag", "utilisation", "direct")}
                    for name, r in results.items()
                },
            }
        )
    return {"policies": policies, "astrologers": astrologers}


def format_text(results: dict[str, dict[str, Any]], scenario: Scenario, headline: str) -> str:
    lines = [headline, ""]
    main_policy = "astroq" if "astroq" in results else next(iter(results))
    lines.append(f"per astrologer ({main_policy}); shares of {results[main_policy]['general_offers']} general offers,")
    lines.append("lag = target - actual in requests (positive: behind), util = session time / (capacity x online time)")
    lines.append(f"{'id':<8}{'weight':>7}{'cap':>4}{'top':>4}{'target%':>9}{'actual%':>9}{'lag':>8}{'util%':>7}")
    for spec, row in zip(scenario.astrologers, results[main_policy]["astrologers"]):
        top = "top" if spec.is_top else ("-" if spec.flow_enabled else "off")
        lines.append(
            f"{spec.id:<8}{spec.weight:>7.1f}{spec.capacity:>4}{top:>4}"
            f"{100 * row['target_share']:>9.2f}{100 * row['actual_share']:>9.2f}"
            f"{row['lag']:>+8.1f}{100 * row['utilisation']:>7.1f}"
        )
    lines.append("")
    lines.append("policy           jain   max_lag  stretch_lag   general wait p50/p95/p99 s   direct wait p50/p95/p99 s  timeouts")
    for name, r in results.items():
        general = f"{r['wait_p50_s']:.1f}/{r['wait_p95_s']:.1f}/{r['wait_p99_s']:.1f}"
        direct = f"{r['direct_wait_p50_s']:.1f}/{r['direct_wait_p95_s']:.1f}/{r['direct_wait_p99_s']:.1f}"
        lines.append(
            f"{name:<15}{r['jain']:>7.4f}{r['max_lag']:>10.1f}{r['stretch_lag']:>13.3f}"
            f"{general:>29}{direct:>28}{r['cancelled'].get('timeout', 0):>10}"
        )
    return "\n".join(lines)


COLOURS = {
    "astroq": "#1b6ca8",
    "least_loaded": "#d1495b",
    "weighted_random": "#edae49",
    "round_robin": "#00798c",
    "longest_idle": "#6c4f9e",
}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def render_svg(results: dict[str, dict[str, Any]], scenario: Scenario, headline: str) -> str:
    """A self-contained chart: shares against targets per policy, and wait distributions."""
    names = list(results)
    colour = {name: COLOURS.get(name, "#333") for name in names}
    panel, gap, margin = 210, 34, 56
    width = max(2 * margin + len(names) * (panel + gap) - gap, 1100)
    height = 990
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{margin}" y="30" font-size="17" font-weight="bold">{_esc(headline)}</text>',
        f'<text x="{margin}" y="64" font-size="14" font-weight="bold">General offers per astrologer: '
        "actual share against its fair target (on the dashed diagonal = fair)</text>",
        f'<text x="{margin}" y="82" fill="#555" font-size="11">Target: each general offer entitles every '
        "astrologer free at that moment to weight / (sum of free weights) of it. Dot area grows with weight.</text>",
    ]

    # 1. Scatter of actual share against target share, one panel per policy.
    rows = {name: results[name]["astrologers"] for name in names}
    top = max((max(r["target_share"], r["actual_share"]) for rs in rows.values() for r in rs), default=0.01)
    top = (math.ceil(top * 1.05 * 100) / 100) or 0.01  # a round percentage
    y0 = 100
    for k, name in enumerate(names):
        x0 = margin + k * (panel + gap)
        r = results[name]
        out.append(f'<rect x="{x0}" y="{y0}" width="{panel}" height="{panel}" fill="#fafafa" stroke="#999"/>')
        for frac in (0.5, 1.0):
            gx = x0 + panel * frac
            gy = y0 + panel - panel * frac
            out.append(f'<line x1="{gx:.1f}" y1="{y0}" x2="{gx:.1f}" y2="{y0 + panel}" stroke="#e6e6e6"/>')
            out.append(f'<line x1="{x0}" y1="{gy:.1f}" x2="{x0 + panel}" y2="{gy:.1f}" stroke="#e6e6e6"/>')
            label = f"{100 * top * frac:g}%"
            out.append(f'<text x="{gx:.1f}" y="{y0 + panel + 13}" text-anchor="middle" font-size="10">{label}</text>')
            if k == 0:
                out.append(f'<text x="{x0 - 4}" y="{gy + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
        out.append(f'<line x1="{x0}" y1="{y0 + panel}" x2="{x0 + panel}" y2="{y0}" stroke="#888" stroke-dasharray="5 4"/>')
        for row, spec in zip(rows[name], scenario.astrologers):
            if row["target"] < 1 and row["actual"] == 0:
                continue
            cx = x0 + panel * min(row["target_share"] / top, 1.0)
            cy = y0 + panel - panel * min(row["actual_share"] / top, 1.0)
            radius = 1.8 * math.sqrt(spec.weight) + 1.0
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius:.1f}" fill="{colour[name]}" fill-opacity="0.6"/>')
        out.append(f'<text x="{x0 + panel / 2}" y="{y0 + panel + 32}" text-anchor="middle" font-size="13" '
                   f'font-weight="bold">{_esc(name)}</text>')
        out.append(f'<text x="{x0 + panel / 2}" y="{y0 + panel + 49}" text-anchor="middle">'
                   f"Jain {r['jain']:.3f} · max lag {r['max_lag']:.0f}</text>")
        out.append(f'<text x="{x0 + panel / 2}" y="{y0 + panel + 65}" text-anchor="middle">'
                   f"stretch lag {r['stretch_lag']:.3f}</text>")
    out.append(f'<text x="{margin - 40}" y="{y0 + panel / 2}" font-size="11" fill="#555" '
               f'transform="rotate(-90 {margin - 40} {y0 + panel / 2})" text-anchor="middle">actual share</text>')
    out.append(f'<text x="{margin}" y="{y0 + panel + 86}" fill="#555" font-size="11">x: target share. '
               "Max lag: the largest |target - actual| at the end of the day, in requests.</text>")
    out.append(f'<text x="{margin}" y="{y0 + panel + 101}" fill="#555" font-size="11">Stretch lag: SPEC §5\'s '
               "measure, the largest |count - share| within any stretch (eligible set unchanged); under 1 for "
               "astroq unless a request's exclusions force a pick.</text>")

    # 2. Wait distributions, general and direct: log time, tail-stretched percent.
    chart_y = y0 + panel + 150
    chart_h = 330
    chart_w = (width - 2 * margin - 70) / 2
    charts = [("General requests: wait from arrival to acceptance", "wait_quantiles_s"),
              ("Direct requests: wait from arrival to acceptance", "direct_wait_quantiles_s")]
    ticks_s = [1.0, 10.0, 60.0, 600.0, 3600.0]
    t_min, t_max = ticks_s[0], ticks_s[-1]

    def x_of(x0: float, value: float) -> float:
        v = min(max(value, t_min), t_max)
        return x0 + chart_w * math.log10(v / t_min) / math.log10(t_max / t_min)

    def y_of(pct: float) -> float:
        # -log10(1 - p): 50% at 0.3, 90% at 1, 99% at 2, 99.9% at 3.
        depth = -math.log10(max(1 - pct / 100, 1e-3))
        return chart_y + chart_h - chart_h * depth / 3

    for c, (title, key) in enumerate(charts):
        left = margin + c * (chart_w + 70.0)
        out.append(f'<text x="{left}" y="{chart_y - 14}" font-size="14" font-weight="bold">{_esc(title)}</text>')
        out.append(f'<rect x="{left}" y="{chart_y}" width="{chart_w:.1f}" height="{chart_h}" fill="#fafafa" stroke="#999"/>')
        for tick in ticks_s:
            gx = x_of(left, tick)
            out.append(f'<line x1="{gx:.1f}" y1="{chart_y}" x2="{gx:.1f}" y2="{chart_y + chart_h}" stroke="#e2e2e2"/>')
            out.append(f'<text x="{gx:.1f}" y="{chart_y + chart_h + 16}" text-anchor="middle" font-size="11">'
                       f"{_fmt_duration(tick)}</text>")
        for pct in (0, 50, 90, 99, 99.9):
            gy = y_of(pct)
            out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + chart_w:.1f}" y2="{gy:.1f}" stroke="#e2e2e2"/>')
            out.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="11">p{pct:g}</text>')
        for name in names:
            qs = results[name][key]
            if not any(qs):
                continue
            points = " ".join(f"{x_of(left, v):.1f},{y_of(p):.1f}" for p, v in zip(QUANTILE_POINTS, qs) if p < 100)
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour[name]}" stroke-width="2" '
                       'stroke-opacity="0.85"/>')
        out.append(f'<text x="{left + chart_w / 2:.1f}" y="{chart_y + chart_h + 34}" text-anchor="middle" fill="#555" '
                   'font-size="11">wait (log scale); a curve reaching pN at t: N% were accepted within t</text>')

    # 3. Legend with the numbers behind the curves.
    legend_y = chart_y + chart_h + 66
    out.append(f'<text x="{margin}" y="{legend_y}" font-weight="bold">policy: general wait p50 / p95 / p99 · '
               "direct wait p50 / p95 / p99</text>")
    for k, name in enumerate(names):
        r = results[name]
        ly = legend_y + 20 + 18 * k
        out.append(f'<rect x="{margin}" y="{ly - 10}" width="14" height="10" fill="{colour[name]}"/>')
        out.append(
            f'<text x="{margin + 22}" y="{ly}">{_esc(name)}: '
            f"{r['wait_p50_s']:.0f} / {r['wait_p95_s']:.0f} / {r['wait_p99_s']:.0f} s · "
            f"{r['direct_wait_p50_s']:.0f} / {r['direct_wait_p95_s']:.0f} / {r['direct_wait_p99_s']:.0f} s</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astroq simulate",
        description="Replay a synthetic day through the flow algorithm and baseline policies.",
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests in the day (default 20000)")
    parser.add_argument("--astrologers", type=int, default=50, help="astrologers (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--direct-share", type=float, default=0.15, help="share of direct requests (default 0.15)")
    parser.add_argument("--offer-timeout", type=float, default=15.0, help="seconds an offer lasts (default 15)")
    parser.add_argument("--max-missed", type=int, default=3, help="expired offers in a row before a break (default 3)")
    parser.add_argument("--max-wait", type=float, default=1800.0, help="seconds before a request times out; 0 = never")
    parser.add_argument("--load", type=float, default=0.7, help="mean use of capacity the sessions aim at (default 0.7)")
    parser.add_argument("--boost", type=float, default=2.0, help="top_flow boost factor (default 2)")
    parser.add_argument("--capacity", type=int, help="give every astrologer this capacity (default: a mix of 1-4)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated, from {', '.join(POLICIES)} (default all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--chart", metavar="FILE.svg", help="also write an SVG chart")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        parser.error(f"unknown policy: {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICIES)}")
    if args.capacity is not None and args.capacity < 1:
        parser.error("--capacity must be at least 1")
    if args.requests < 1 or args.astrologers < 1:
        parser.error("--requests and --astrologers must be at least 1")
    if not 0 <= args.direct_share <= 1:
        parser.error("--direct-share must be between 0 and 1")
    if args.offer_timeout <= 0 or args.load <= 0 or args.boost <= 0 or args.max_missed < 1 or args.max_wait < 0:
        parser.error("--offer-timeout, --load and --boost must be positive, --max-missed at least 1")
    started = time.perf_counter()
    scenario = make_scenario(
        requests=args.requests,
        astrologers=args.astrologers,
        seed=args.seed,
        direct_share=args.direct_share,
        offer_timeout_s=args.offer_timeout,
        max_missed=args.max_missed,
        max_wait_s=args.max_wait,
        load=args.load,
        boost=args.boost,
        capacity=args.capacity,
    )
    results = run_policies(scenario, policies, jobs=max(1, args.jobs))
    elapsed = time.perf_counter() - started
    headline = (
        f"astroq simulate: {args.requests} requests, {args.astrologers} astrologers, seed {args.seed}, "
        f"direct {100 * args.direct_share:g}%, load {args.load:g} (mean session {scenario.mean_session_s:.0f} s)"
    )
    if args.json:
        json.dump(summary(results, scenario), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_text(results, scenario, headline))
        per_policy = ", ".join(f"{name} {r['elapsed_s']:.2f} s" for name, r in results.items())
        print(f"\nelapsed {elapsed:.2f} s ({per_policy})")
    if args.chart:
        with open(args.chart, "w", encoding="utf-8") as fh:
            fh.write(render_svg(results, scenario, headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
