"""Live positions, estimated waits and `waiting` counts, sent only when they change.

One pass reads every line with its owners in one script, computes each waiting
request's position (1 + requests ahead of it that still wait) and estimate,
and publishes only what differs from what that client was last sent; so a
client always holds the latest value, and an unchanged one costs nothing.

ETA(k) = ceil(k / c) x average handle time, with c the capacity of the online
astrologers who could serve the request (SPEC: null while there is none).

A pass can change the position of every waiting user at once, so its frames go
out in a few batches on the fan-out channel every gateway reads (journal.py),
not as one message per account: 10,000 PUBLISH calls a pass cost the matcher
~0.3 s and each gateway as much again to read.

A pass sends at most FANOUT_PER_PASS position frames, those whose change is
oldest first. With a long line every waiting user's place changes on every pass,
and sending them all (10,000 frames every 100 ms) would flood the gateways: the
frames would queue in pub/sub and every position would arrive seconds late.
Spread over passes, each user still hears its latest place within
waiting / FANOUT_PER_PASS passes (0.7-1 s for 10,000), at a rate a gateway keeps.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from matcher.journal import fanout_line, frame_message, publish_fanout
from matcher.keys import Keys
from matcher.store import Store
from server import metrics

DEFAULT_HANDLE_MS = 300_000  # until a session has ended, assume five minutes
UNDER_OFFER = (0, None)  # no position while under offer
# Position frames per pass (every 100-150 ms): up to 15,000 a second. A gateway
# holding 19,600 sockets writes a frame in 39-48 us: at 2,000 a pass it fell
# behind on a busy machine and the backlog made positions 1.3-1.9 s late (p99);
# at 1,500, 10,000 waiting each heard their place within 0.83-0.93 s (p99).
FANOUT_PER_PASS = 1_500


def eta_seconds(position: int, capacity: int, avg_ms: float) -> float | None:
    if capacity <= 0:
        return None
    return math.ceil(position / capacity) * (avg_ms or DEFAULT_HANDLE_MS) / 1000


@dataclass
class Positions:
    store: Store
    redis: Redis
    keys: Keys
    # What each acknowledged request's owner was last told. A request enters when
    # its `queued` frame has gone out, so no `position` ever precedes its ack.
    sent: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    waiting_sent: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Requests whose owner has not yet heard their latest place, and since when.
    stale_since: dict[str, float] = field(default_factory=dict)
    adopt_all: bool = True  # after a rebuild or a new leader: every waiting request was acked
    _value_cache: dict[tuple[int, float], list[tuple[int, float | None]]] = field(default_factory=dict)

    def _values(self, count: int, capacity: int, avg_ms: float) -> list[tuple[int, float | None]]:
        """(position, eta) for places 1..count. Kept while capacity and handle time
        hold, so a pass builds no tuple, and an unchanged place compares by identity."""
        key = (capacity, avg_ms)
        values = self._value_cache.get(key)
        if values is None:
            if len(self._value_cache) > 64:
                self._value_cache.clear()
            values = self._value_cache[key] = []
        for position in range(len(values) + 1, count + 1):
            values.append((position, eta_seconds(position, capacity, avg_ms)))
        return values

    def remember(self, request_id: str, position: int, eta: float | None) -> None:
        """The `queued` frame told the client this already."""
        self.sent[request_id] = (position, eta)

    def under_offer(self, request_id: str) -> None:
        """Its owner is told its place again when it comes back, even at the same place."""
        if request_id in self.sent:
            self.sent[request_id] = UNDER_OFFER

    def gone(self, request_id: str) -> None:
        """The request ended: nothing more to tell about it."""
        self.sent.pop(request_id, None)
        self.stale_since.pop(request_id, None)

    def forget_all(self) -> None:
        self.sent.clear()
        self.waiting_sent.clear()
        self.stale_since.clear()
        self.adopt_all = True

    async def publish(self) -> dict[str, Any]:
        data = await self.store.lines()
        top_flow, avg_ms = data["top_flow"], data["avg_ms"]
        astrologers = data["astrologers"] if isinstance(data["astrologers"], list) else []
        general_cap = 0
        capacity: dict[str, int] = {}
        by_status = {"online": 0, "break": 0, "offline": 0}
        busy_slots = free_slots = 0
        for aid, status, cap, flow_enabled, is_top, _weight, load in astrologers:
            by_status[status] = by_status.get(status, 0) + 1
            busy_slots += load
            if status == "online":
                capacity[aid] = cap
                free_slots += max(0, cap - load)
                if flow_enabled and not (is_top and top_flow == "off"):
                    general_cap += cap

        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.m("etaparams"), "cap_general", general_cap)
        live: set[str] = set()
        now = time.monotonic()
        stale_since = self.stale_since
        changed: list[tuple[str, str, tuple[int, float | None]]] = []

        sent, adopt_all = self.sent, self.adopt_all

        def line(pairs: Any, cap: int) -> int:
            """Collects the line's changed places; a pass with a long line walks every
            request in it, so the walk does as little as it can per request."""
            pairs = pairs if isinstance(pairs, list) else []
            rids, uids = pairs[0::2], pairs[1::2]
            live.update(rids)
            if adopt_all:
                for rid in rids:
                    sent.setdefault(rid, UNDER_OFFER)  # acked; its place not yet told
            sent_get, stale_pop, stale_mark = sent.get, stale_since.pop, stale_since.setdefault
            for rid, uid, value in zip(rids, uids, self._values(len(rids), cap, avg_ms)):
                told = sent_get(rid)
                if told is None:
                    continue  # its ack and `queued` are not out yet
                if told == value or not uid:
                    stale_pop(rid, None)
                    continue
                stale_mark(rid, now)
                changed.append((rid, uid, value))
            return len(rids)

        general_waiting = line(data["general"], general_cap)
        direct = data["direct"] if isinstance(data["direct"], dict) else {}
        direct_waiting = {aid: line(pairs, capacity.get(aid, 0)) for aid, pairs in direct.items()}
        self.adopt_all = False
        for rid in self.sent:
            if rid not in live:
                # Under offer: when it comes back, its owner hears its place again.
                self.sent[rid] = UNDER_OFFER
        for rid in [rid for rid in stale_since if rid not in live]:
            del stale_since[rid]

        if len(changed) > FANOUT_PER_PASS:
            changed = heapq.nsmallest(FANOUT_PER_PASS, changed, key=lambda c: stale_since[c[0]])
        out: list[bytes] = []  # fan-out lines (journal.fanout_line)
        for rid, uid, value in changed:
            self.sent[rid] = value
            del stale_since[rid]
            frame = {"type": "position", "request_id": rid, "position": value[0], "eta_seconds": value[1]}
            out.append(fanout_line(uid, frame))

        for aid, status, *_ in astrologers:
            if status == "offline":
                self.waiting_sent.pop(aid, None)
                continue
            counts = (direct_waiting.get(aid, 0), general_waiting)
            if self.waiting_sent.get(aid) != counts:
                self.waiting_sent[aid] = counts
                frame = {"type": "waiting", "direct": counts[0], "general": counts[1]}
                out.append(fanout_line(aid, frame))
        publish_fanout(pipe, self.keys, out)
        await pipe.execute()

        metrics.WAITING.labels("general").set(general_waiting)
        metrics.WAITING.labels("direct").set(sum(direct_waiting.values()))
        for status, count in by_status.items():
            metrics.ASTROLOGERS.labels(status).set(count)
        metrics.BUSY_SLOTS.set(busy_slots)
        metrics.FREE_SLOTS.set(free_slots)
        return {
            "live": data["live"],
            "by_status": by_status,
            "data": data,
            "sent": len(out),
            "deferred": len(stale_since),  # owners still to hear their latest place
        }


def admin_message(stats: dict[str, Any]) -> bytes:
    return frame_message("", "", {"type": "stats", **stats})


def encode(value: Any) -> bytes:
    return orjson.dumps(value)
