"""The flow-distribution algorithm: a pure function from a snapshot to a decision.

`decide` takes an immutable `FlowSnapshot` (the online astrologers with their load,
the heads of the lines, the admin's top-flow setting and the carried `Stretch`) and
returns every offer to make now plus the new `Stretch`. It does no I/O, keeps no
state between calls and imports only the standard library, so the matcher loop and
the simulator (`matcher/simulate.py`) run exactly the same code.

Order of service (SPEC §5)
--------------------------
1. A free astrologer's own line first: its oldest direct requests while it has free
   slots. Direct requests reach their astrologer even when it is top with
   `top_flow` off or has `flow_enabled` false.
2. Then the general line, oldest first. Each request goes to one *eligible*
   astrologer: free (after the offers already made in this decision),
   `flow_enabled`, not (`is_top` while `top_flow` is off), weight > 0, and not in
   the request's `excluded` set. A request nobody eligible may take is skipped and
   keeps its place; requests further back may still be offered. The loop stops as
   soon as no free eligible astrologer is left, so a long line costs nothing.

The fair scheme: WF2Q on assignment counts
------------------------------------------
SPEC §5 asks that, over any stretch in which a set of astrologers stays eligible
and instantly free, each one's count of general assignments since the set became
eligible stays within 1 of its weighted fair share ``total * w_i / W`` (W = sum of
the effective weights). This is a unit-size packet scheduling problem, and the
scheme used is WF2Q (Bennett & Zhang's worst-case fair weighted fair queueing)
with every request a packet of size 1 and the fluid reference ("GPS") being the
exact fair share:

* an astrologer is *not ahead* when ``c_i <= total * w_i / W`` (its virtual start
  ``c_i / w_i`` is not past the system's virtual time ``total / W``);
* among the not-ahead candidates pick the smallest virtual finish
  ``(c_i + 1) / w_i``; ties go to the one idle longest (smallest
  ``idle_since_ms``; one that already got an offer in this decision counts as the
  most recently served), then to the smaller id;
* except for the first pick of a stretch, which the bound leaves free: it goes to
  the member the whole day owes most (see "The first pick of a stretch").

Both bounds are strict, ``|c_i - total * w_i / W| < 1`` at every step:

* *Upper*: i is only picked while ``c_i <= T w_i / W``; right after,
  ``c_i + 1 - (T + 1) w_i / W <= 1 - w_i / W < 1``; while it is not picked its
  share grows and its count does not.
* *Lower*: the k-th assignment of i may start at step t once
  ``(k - 1) W / w_i <= t - 1`` and must be done by step ``ceil(k W / w_i)``. For
  any window of steps [a, b] the jobs that must fit inside it number fewer than
  ``sum_i (b - a + 2) w_i / W = b - a + 2``, so at most ``b - a + 1``: the unit-job
  system is feasible, and picking the earliest deadline among the released jobs
  (EDF, which is what "smallest finish among not-ahead" is) meets every deadline.
  The full argument is in docs/flow.md.

Why not a simpler rule? Each of these breaks the within-1 bound:

* *Stride scheduling / WFQ / D'Hondt* (smallest ``(c_i + 1) / w_i`` with no
  not-ahead test): weights 5,1,1,1,1,1 give the heavy astrologer the first four
  requests in a row, 2 above its share of 2 (upper quota violated).
* *Least-loaded, weighted* (smallest ``c_i / w_i``, i.e. Adams / start-time fair
  queueing): with the same weights the five light astrologers each take one
  request while the heavy one waits, leaving it 2 below its share of 3.
* *Least-loaded, unweighted* ignores the weights altogether.
* *Weighted random* is fair only on average; its lag grows like the square root
  of the total.

Stretches and what resets them
------------------------------
`Stretch` holds the eligible set (`members`: sorted (id, effective weight) pairs,
ignoring per-request exclusions), the counts since that set became eligible and
their total. Whenever the free, flow-eligible set or an effective weight differs
from `members` a new stretch begins with every count at zero. This happens between
decisions (someone comes online, returns from break, finishes a session, the admin
flips `top_flow`) and inside one (an offer fills an astrologer's last slot). A
joiner therefore starts level with the others: no catch-up burst, no debt carried
from an earlier stretch.

Exclusions (a request declined by or expired at an astrologer is never offered to
it again) are per request and may leave no not-ahead candidate; the request then
goes to the remaining candidate with the smallest virtual finish. Only then can the
bound be exceeded in that stretch.

The first pick of a stretch
---------------------------
Under real load the set changes at almost every event (a session ends, an offer
fills a slot), so most stretches are a single offer long, and their first picks
decide how work is shared over a day. Any first pick keeps the bound: after it the
picked member is at most ``1 - w_j / W`` above its share and the others below theirs
by less than 1, and the jobs still due by any slot b number at most b - 1, which the
slots 2..b hold, so EDF goes on meeting every deadline (docs/flow.md has the
argument). So the first pick goes to the member the day owes most: the smallest
virtual finish ``pass_i + 1 / w_i``, where `Stretch.vtime` advances by 1 / W at every
general assignment (W the eligible weight then) and ``pass_i`` by ``1 / w_i`` at each
of i's own, whatever the stretch; ties go to the longest idle, then the smaller id.
This is start-time fair queueing over the whole day: a member that stays free is
owed more with every assignment it does not get, and over a day each astrologer's
share of the general flow follows its weight and the time it was free. A member that
joins the set (online, back from a break, free again) starts at the virtual time:
level, with nothing owed and nothing held against it. Passes are floats; they only
order first picks, never decide the bound.

Exact arithmetic
----------------
Effective weights are floats and every float is an exact binary fraction, so all
weights are scaled by the lowest common denominator into integers ``N_i``. The
not-ahead test is the integer comparison ``c_i * sum(N) <= T * N_i``; heap keys for
``x / N_i`` are ``(x << s) // N_i`` with ``2**s`` above any product ``N_i * N_j``,
which orders distinct rationals strictly and equal ones equally. Floating error
never decides a pick.

Cost
----
One pass over the astrologers (build the eligible set, compare with `members`),
then heaps: O(n + k log n) for k offers among n free astrologers, including the
resets caused by filled slots (the first pick after one comes from a heap of
virtual finishes). The first pick of a decision, the common case, needs no heap: a
few scans in C over the passes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterable, Mapping


class TopFlow(StrEnum):
    OFF = "off"
    ON = "on"
    BOOST = "boost"


@dataclass(frozen=True)
class Astrologer:
    """An online astrologer as the matcher sees it at one instant."""

    id: str
    weight: float
    capacity: int
    load: int  # open offers plus sessions
    is_top: bool = False
    flow_enabled: bool = True
    idle_since_ms: int = 0  # when it last received an offer; smaller = idle longer


@dataclass(frozen=True)
class Waiting:
    """A request waiting in a line (not under offer)."""

    request_id: str
    seq: int  # its place in the line: smaller is older
    excluded: frozenset[str] = frozenset()  # astrologers it must not be offered to again


@dataclass(frozen=True)
class Stretch:
    """Flow state: the eligible set since it last changed, and its general counts."""

    members: tuple[tuple[str, float], ...] = ()  # (astrologer id, effective weight), sorted
    counts: Mapping[str, int] = field(default_factory=dict)
    total: int = 0
    # Across stretches, for the first pick of each (see "The first pick of a stretch"):
    # virtual time, which each general assignment advances by 1 / (the eligible
    # weight then), and each member's virtual pass, advanced by 1 / w at each of its
    # assignments. A member that joins the eligible set starts at the virtual time.
    vtime: float = 0.0
    passes: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FlowSnapshot:
    astrologers: tuple[Astrologer, ...]  # every astrologer whose status is online
    general: tuple[Waiting, ...]  # head of the general line, oldest first
    direct: Mapping[str, tuple[Waiting, ...]]  # head of each astrologer's own line
    top_flow: TopFlow = TopFlow.ON
    boost: float = 2.0
    stretch: Stretch = Stretch()


@dataclass(frozen=True)
class Offer:
    request_id: str
    astrologer_id: str
    direct: bool


@dataclass(frozen=True)
class Decision:
    offers: tuple[Offer, ...]
    stretch: Stretch


def effective_weight(astrologer: Astrologer, top_flow: TopFlow | str, boost: float) -> float | None:
    """The astrologer's weight in the general flow, or None when it takes no general requests.

    Ignores load: a busy astrologer still has an effective weight. None when
    `flow_enabled` is false, when it is top and `top_flow` is off, or when the
    weight (times `boost` when top and `top_flow` is boost) is not a positive finite
    number.
    """
    if not astrologer.flow_enabled:
        return None
    weight = astrologer.weight
    if astrologer.is_top:
        if top_flow == TopFlow.OFF:
            return None
        if top_flow == TopFlow.BOOST:
            weight = weight * boost
    if not (weight > 0 and math.isfinite(weight)):
        return None
    return weight


def fair_shares(members: Iterable[tuple[str, float]], total: int) -> dict[str, float]:
    """Each member's weighted fair share of `total` assignments (for reports and tests)."""
    pairs = list(members)
    weight_sum = sum(w for _, w in pairs)
    return {aid: total * w / weight_sum for aid, w in pairs}


_ID = operator.attrgetter("id")
_WEIGHT = operator.attrgetter("weight")
_IDLE = operator.attrgetter("idle_since_ms")
_INVERSE = (1.0).__truediv__  # 1 / w, as float division


def _eligible(
    astrologers: Iterable[Astrologer], top_flow: TopFlow | str, boost: float
) -> tuple[list[Astrologer], list[float]]:
    """The free astrologers that take general requests, and their effective weights."""
    if top_flow == TopFlow.OFF:
        chosen = [a for a in astrologers if a.load < a.capacity and a.flow_enabled and not a.is_top]
        weights = list(map(_WEIGHT, chosen))
    elif top_flow == TopFlow.BOOST:
        chosen = [a for a in astrologers if a.load < a.capacity and a.flow_enabled]
        weights = [a.weight * boost if a.is_top else a.weight for a in chosen]
    else:
        chosen = [a for a in astrologers if a.load < a.capacity and a.flow_enabled]
        weights = list(map(_WEIGHT, chosen))
    # A NaN or an infinity makes the sum non-finite; min catches zero and negatives.
    if weights and not (math.isfinite(sum(weights)) and min(weights) > 0):
        keep = [k for k, w in enumerate(weights) if w > 0 and math.isfinite(w)]
        chosen = [chosen[k] for k in keep]
        weights = [weights[k] for k in keep]
    return chosen, weights


def _without(members: tuple[tuple[str, float], ...], gone: list[str]) -> tuple[tuple[str, float], ...]:
    """`members` (sorted by id) without the ids in `gone`, by slicing rather than a scan."""
    if len(gone) == 1:
        at = bisect.bisect_left(members, (gone[0],))
        return members[:at] + members[at + 1 :]
    kept: list[tuple[tuple[str, float], ...]] = []
    start = 0
    for aid in sorted(gone):
        at = bisect.bisect_left(members, (aid,), start)
        kept.append(members[start:at])
        start = at + 1
    kept.append(members[start:])
    return tuple(itertools.chain.from_iterable(kept))


class _Fair:
    """WF2Q over the members of the current stretch, for the rest of one decision.

    The first pick of a fresh stretch (every count zero, also after a reset) is the
    smallest virtual finish over the day, then the longest idle, then the smallest
    id: a scan when it is the decision's first, else the ``fresh`` heap. Picks
    within a stretch use three heaps, in which each member sits in exactly one; an
    entry whose version is not the member's current one is stale:

    * ``zero``: count 0, so never ahead. Its finish ``1 / w`` orders like ``-w``,
      which floats compare exactly, so entries are ``(-w, idle, id, version)``. It
      survives resets (after one every member is back at count 0): a reset only
      pushes back the members touched since the last one.
    * ``ready``: count > 0, not ahead, ``(finish key, idle, id, version)``.
    * ``ahead``: count > 0, ahead, ``(start key, id, version)``; moved to ``ready``
      once the grown total makes them not ahead.

    Keys of ``x / w`` are ``(x << shift) // N`` with N the weight scaled to an
    integer; ``2**shift`` exceeds any product of two N, so distinct rationals get
    distinct keys in the right order and equal ones equal keys.
    """

    def __init__(
        self,
        ids: list[str],
        weights: list[float],
        chosen: list[Astrologer],
        counts: Mapping[str, int],
        total: int,
        served: dict[str, int],
        order: dict[str, int],
        passes: dict[str, float],
        vtime: float,
    ) -> None:
        self.ids, self.weights, self.chosen = ids, weights, chosen
        self.passes, self.vtime = passes, vtime
        # Of the members still in: summed exactly rounded (so member order does not
        # matter), then less each member that leaves.
        self.weight_total = math.fsum(weights)
        # Virtual finishes for first picks after a reset, built on first need.
        self.fresh: list[tuple[float, int, str, int]] | None = None
        self.fresh_version: dict[str, int] = {}
        self.served = served  # offers made in this decision, per astrologer
        # When each was last served in this decision: in idle ties it then ranks
        # after everyone not served, in that order (see idle_of).
        self.order = order
        self.late = 0
        self.total = total
        self.counts: dict[str, int] = {aid: c for aid, c in counts.items() if c > 0} if counts else {}
        self.removed: list[str] = []  # members filled in this decision; each began a new stretch
        self.left = len(ids)  # members still in the stretch
        self.built = False
        self.fast: Astrologer | None = None  # the first pick's astrologer, before any heap
        self.fast_weight = 0.0  # and its effective weight
        if self.counts:
            self._build()

    def _build(self) -> None:
        ids, weights, gone = self.ids, self.weights, set(self.removed)
        weight_of = dict(zip(ids, weights))
        astrologer_of = dict(zip(ids, self.chosen))
        for aid in gone:
            del weight_of[aid]
        self.counts = {aid: c for aid, c in self.counts.items() if aid in weight_of}
        ratios = {w: w.as_integer_ratio() for w in set(weight_of.values())}
        denominator = 1
        for _, d in ratios.values():
            denominator = math.lcm(denominator, d)
        scaled = {w: n * (denominator // d) for w, (n, d) in ratios.items()}
        self.shift = shift = 2 * max(scaled.values()).bit_length() + 2
        self.scaled = scaled
        self.weight_of = weight_of
        self.astrologer_of = astrologer_of
        self.weight_sum = weight_sum = sum(map(scaled.__getitem__, weight_of.values()))
        counts, total = self.counts, self.total
        # Counted members start at version 1, so their version-0 entries in ``zero``
        # are stale from the outset: no pass to filter them out.
        self.version: dict[str, int] = dict.fromkeys(counts, 1)
        idles = list(map(_IDLE, self.chosen))
        self.late = max(idles) + 1
        if self.order:
            idles = [self.idle_of(aid) for aid in ids]
        zero = list(zip(map(operator.neg, weights), idles, ids, itertools.repeat(0)))
        ready: list[tuple[int, int, str, int]] = []
        ahead: list[tuple[int, str, int]] = []
        for aid, c in counts.items():
            n = scaled[weight_of[aid]]
            if c * weight_sum <= total * n:
                ready.append((((c + 1) << shift) // n, self.idle_of(aid), aid, 1))
            else:
                ahead.append(((c << shift) // n, aid, 1))
        heapq.heapify(zero)
        heapq.heapify(ready)
        heapq.heapify(ahead)
        self.zero, self.ready, self.ahead = zero, ready, ahead
        self.built = True

    def __bool__(self) -> bool:
        return self.left > 0

    def idle_of(self, aid: str) -> int:
        """Idle rank: smaller is idle longer; served in this decision ranks last."""
        served_at = self.order.get(aid)
        return self.astrologer_of[aid].idle_since_ms if served_at is None else self.late + served_at

    def covers(self, excluded: frozenset[str]) -> bool:
        """Whether `excluded` names every member (nobody may take that request)."""
        if len(excluded) < self.left:
            return False
        if self.built:
            return all(aid in excluded for aid in self.weight_of)
        gone = self.removed
        return all(aid in excluded or aid in gone for aid in self.ids)

    def _top(self, heap: list, excluded: frozenset[str], stash: list) -> tuple | None:
        """The best current entry not excluded; stale ones are dropped, excluded ones stashed."""
        version, weight_of = self.version, self.weight_of
        while heap:
            entry = heap[0]
            aid = entry[2]
            if aid not in weight_of or version.get(aid, 0) != entry[3]:
                heapq.heappop(heap)
            elif aid in excluded:
                stash.append(heapq.heappop(heap))
            else:
                return entry
        return None

    def _first_pick(self, excluded: frozenset[str]) -> str | None:
        """Fresh stretch (every count zero): the smallest virtual finish ``pass + 1 / w``
        over the day, then the longest idle, then the smallest id."""
        if self.built or self.order or self.removed:
            return self._first_pick_by_heap(excluded)
        ids, weights, idles = self.ids, self.weights, list(map(_IDLE, self.chosen))
        # Scans in C: the virtual finishes, then rank only the ones tied with the best.
        finishes = list(map(operator.add, map(self.passes.__getitem__, ids), map(_INVERSE, weights)))
        if excluded:
            entries = zip(finishes, idles, ids, range(len(ids)))
            best = min((e for e in entries if e[2] not in excluded), default=None)
            if best is None:
                return None
            at = best[3]
        else:
            least = min(finishes)
            at = finishes.index(least)
            ties = finishes.count(least)
            if ties > 1:
                tied = [at]
                for _ in range(ties - 1):
                    tied.append(finishes.index(least, tied[-1] + 1))
                at = min(tied, key=lambda k: (idles[k], ids[k]))
        self.fast, self.fast_weight = self.chosen[at], weights[at]
        return ids[at]

    def _first_pick_by_heap(self, excluded: frozenset[str]) -> str | None:
        """The same choice once offers have been made in this decision: from a heap of
        virtual finishes, so that each reset (a filled slot) costs O(log n), not O(n)."""
        if self.fresh is None:
            if not self.built:
                self._build()
            passes, idle_of = self.passes, self.idle_of
            self.fresh = [(passes[aid] + 1.0 / w, idle_of(aid), aid, 0) for aid, w in self.weight_of.items()]
            heapq.heapify(self.fresh)
        heap, weight_of, version = self.fresh, self.weight_of, self.fresh_version
        stash: list[tuple[float, int, str, int]] = []
        picked = None
        while heap:
            _, _, aid, ver = heap[0]
            if aid not in weight_of or version.get(aid, 0) != ver:
                heapq.heappop(heap)
            elif aid in excluded:
                stash.append(heapq.heappop(heap))
            else:
                picked = aid
                break
        for entry in stash:
            heapq.heappush(heap, entry)
        return picked

    def pick(self, excluded: frozenset[str]) -> str | None:
        """Choose the member for one general request, or None when all are excluded.

        The chosen member's heap entry is left in place: `assign` makes it stale.
        """
        if self.total == 0:
            # Any first pick keeps the stretch within its bound (docs/flow.md): take
            # the one the day owes most, so that shares hold over a day as well.
            return self._first_pick(excluded)
        if not self.built:
            self._build()
        version, counts, weight_of, scaled = self.version, self.counts, self.weight_of, self.scaled
        ahead = self.ahead
        if ahead:
            total, weight_sum, shift = self.total, self.weight_sum, self.shift
            while ahead:
                _, aid, ver = ahead[0]
                if aid not in weight_of or version.get(aid, 0) != ver:
                    heapq.heappop(ahead)
                    continue
                c = counts[aid]
                n = scaled[weight_of[aid]]
                if c * weight_sum > total * n:
                    break
                heapq.heappop(ahead)
                heapq.heappush(self.ready, (((c + 1) << shift) // n, self.idle_of(aid), aid, ver))

        stash_zero: list = []
        stash_ready: list = []
        best_zero = self._top(self.zero, excluded, stash_zero) if self.zero else None
        best_ready = self._top(self.ready, excluded, stash_ready) if self.ready else None
        if best_zero is not None and best_ready is not None:
            # Finish 1 / w_z against (c + 1) / w_r, exactly, then idle and id.
            r_aid = best_ready[2]
            lhs = scaled[weight_of[r_aid]]
            rhs = (counts[r_aid] + 1) * scaled[-best_zero[0]]
            if lhs < rhs or (lhs == rhs and best_zero[1:3] < best_ready[1:3]):
                best_ready = None
            else:
                best_zero = None
        for entry in stash_zero:
            heapq.heappush(self.zero, entry)
        for entry in stash_ready:
            heapq.heappush(self.ready, entry)
        if best_zero is not None:
            return best_zero[2]
        if best_ready is not None:
            return best_ready[2]
        return self._fallback(excluded)

    def _fallback(self, excluded: frozenset[str]) -> str | None:
        """Every not-ahead member is excluded: smallest finish among the rest (rare)."""
        best: tuple[int, int, str] | None = None
        for aid, c in self.counts.items():
            if aid in excluded:
                continue
            key = (((c + 1) << self.shift) // self.scaled[self.weight_of[aid]], self.idle_of(aid), aid)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    def assign(self, aid: str, served_at: int) -> None:
        """Record one general assignment to `aid`, now the most recently served."""
        self.order[aid] = served_at
        idle = self.late + served_at
        served = self.served[aid] = self.served.get(aid, 0) + 1
        if not self.built:
            # The first pick of a fresh stretch: bookkeeping only, heaps come later.
            a, weight = self.fast, self.fast_weight
            self.fast = None
            if a is None or a.id != aid:
                raise RuntimeError("assign without a matching pick")
            self._charge(aid, weight)
            if a.load + served >= a.capacity:
                self._leave(aid, weight)
            else:
                self.counts[aid] = 1
                self.total = 1
            return
        version = self.version[aid] = self.version.get(aid, 0) + 1
        weight = self.weight_of[aid]
        self._charge(aid, weight)
        a = self.astrologer_of[aid]
        full = a.load + served >= a.capacity
        if self.fresh is not None:
            fresh_version = self.fresh_version[aid] = self.fresh_version.get(aid, 0) + 1
            if not full:
                heapq.heappush(self.fresh, (self.passes[aid] + 1.0 / weight, idle, aid, fresh_version))
        if full:
            self._remove_and_reset(aid)
            return
        c = self.counts[aid] = self.counts.get(aid, 0) + 1
        self.total += 1
        n = self.scaled[self.weight_of[aid]]
        if c * self.weight_sum <= self.total * n:
            heapq.heappush(self.ready, (((c + 1) << self.shift) // n, idle, aid, version))
        else:
            heapq.heappush(self.ahead, ((c << self.shift) // n, aid, version))

    def _charge(self, aid: str, weight: float) -> None:
        """The day's account of one general assignment: the member's pass moves on by
        1 / w, the virtual time by 1 / W."""
        self.passes[aid] += 1.0 / weight
        self.vtime += 1.0 / self.weight_total

    def _leave(self, aid: str, weight: float) -> None:
        """`aid` filled its last slot and leaves the set; its pass goes with it."""
        self.removed.append(aid)
        self.left -= 1
        del self.passes[aid]
        self.weight_total -= weight

    def _remove_and_reset(self, gone: str) -> None:
        # The eligible set changed: a new stretch starts with every count at zero.
        weight = self.weight_of.pop(gone)
        self._leave(gone, weight)
        self.weight_sum -= self.scaled[weight]
        touched = [aid for aid in self.counts if aid != gone]
        self.counts = {}
        self.total = 0
        self.ready = []
        self.ahead = []
        version = self.version
        if len(touched) * 4 > len(self.weight_of):
            self.zero = [(-w, self.idle_of(aid), aid, version.get(aid, 0)) for aid, w in self.weight_of.items()]
            heapq.heapify(self.zero)
            return
        for aid in touched:
            v = version[aid] = version.get(aid, 0) + 1
            heapq.heappush(self.zero, (-self.weight_of[aid], self.idle_of(aid), aid, v))


def decide(snapshot: FlowSnapshot) -> Decision:
    """All offers to make now, and the stretch after them.

    Invariants (tested in tests/unit/test_flow*.py):

    * no astrologer gets more offers than ``capacity - load``;
    * direct requests go only to their own astrologer, oldest first, before any
      general request is offered to it;
    * general requests are offered oldest first: the offered ones are a prefix of
      those not skipped for exclusions, and a request never goes to an astrologer
      in its `excluded` set;
    * over a stretch the general counts stay strictly within 1 of the weighted fair
      share (see the module docstring);
    * the same snapshot always gives the same decision.

    `general` and each `direct` line must be oldest first. Only their heads need be
    passed: at most the free slots, plus the requests carrying exclusions, can be
    offered.
    """
    astrologers: Iterable[Astrologer] = snapshot.astrologers
    offers: list[Offer] = []
    served: dict[str, int] = {}  # offers made in this decision, per astrologer
    order: dict[str, int] = {}  # when each was last served in this decision

    # 1. Each free astrologer's own line first.
    direct = snapshot.direct
    if direct and any(direct.values()):
        lines = sorted(aid for aid, waiting in direct.items() if waiting)
        if len(lines) <= 8:
            # A few lines: find their astrologers by a scan in C rather than a dict of all.
            ids = list(map(_ID, snapshot.astrologers))
            named = {aid: snapshot.astrologers[ids.index(aid)] for aid in lines if aid in ids}
        else:
            named = {a.id: a for a in snapshot.astrologers}
        filled: set[str] = set()
        for aid in lines:
            a = named.get(aid)
            if a is None or a.load >= a.capacity:
                continue
            room = a.capacity - a.load
            given = 0
            for waiting in direct[aid]:
                if given == room:
                    break
                if aid not in waiting.excluded:
                    offers.append(Offer(waiting.request_id, aid, True))
                    given += 1
            if given:
                served[aid] = given
                order[aid] = len(offers)
                if given == room:
                    filled.add(aid)
        if filled:
            astrologers = [a for a in astrologers if a.id not in filled]

    # 2. The eligible set for the general line, and whether the stretch carries on.
    chosen, weights = _eligible(astrologers, snapshot.top_flow, snapshot.boost)
    ids = list(map(_ID, chosen))
    members = tuple(sorted(zip(ids, weights)))
    stretch = snapshot.stretch
    carried = members == stretch.members
    general = snapshot.general
    vtime, known = stretch.vtime, stretch.passes
    # A joiner starts at the virtual time.
    passes = dict(zip(ids, map(known.get, ids, itertools.repeat(vtime))))
    counts, total = (stretch.counts, stretch.total) if carried else ({}, 0)
    if not members or not general:
        return Decision(tuple(offers), Stretch(members, counts, total, vtime, passes))

    # 3. The general line, oldest first, by WF2Q.
    fair = _Fair(ids, weights, chosen, counts, total, served, order, passes, vtime)
    for waiting in general:
        if not fair:
            break
        excluded = waiting.excluded
        if excluded and fair.covers(excluded):
            continue
        picked = fair.pick(excluded)
        if picked is None:
            continue
        offers.append(Offer(waiting.request_id, picked, False))
        fair.assign(picked, len(offers))

    if fair.removed:
        members = _without(members, fair.removed)
    return Decision(tuple(offers), Stretch(members, fair.counts, fair.total, fair.vtime, fair.passes))
