"""Matcher decision time as the lines and the roster grow.

One decision is what the matcher does when an astrologer frees a slot: read a
snapshot (snapshot.lua), run the pure flow algorithm, commit the offer
(commit.lua). It is timed here on real Redis with the real `Matcher.decide()`,
in a steady state: every astrologer but one busy, one slot just freed by an
accept and an end, the line kept at the same length. The pure `flow.decide`
is timed alone on synthetic snapshots as well.

Live state is written the way the matcher's rebuild writes it (requests in
their lines, owners, the user's open item) for the bulk of the line; every
change during the measurement goes through the real Lua scripts. No matcher
process runs on these keys, so the outbox is read here (to learn the offer ids)
and then trimmed.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from matcher import flow
from matcher.keys import Keys
from matcher.loop import Matcher
from matcher.store import Store
from server.settings import Settings

TOKEN = "bench-fencing-token"
CHUNK = 5_000


def _us(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1e6, 1),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
        "n": len(ordered),
    }


async def _last_offers(redis: Redis, keys: Keys) -> dict[str, str]:
    """Astrologer id -> offer id, from the commits in the outbox; then empties the outbox."""
    offers: dict[str, str] = {}
    entries: Any = await redis.xrange(keys.outbox)
    for _entry_id, fields in entries:
        for op, row in orjson.loads(fields[b"d"]).get("pg") or []:
            if op == "offer":
                offers[row["aid"]] = row["id"]
    await redis.delete(keys.outbox)
    return offers


async def _fill_line(redis: Redis, keys: Keys, count: int, first_seq: int) -> None:
    """`count` general requests, oldest first, written as matcher/rebuild.py writes them."""
    now_ms = int(time.time() * 1000)
    for start in range(0, count, CHUNK):
        pipe = redis.pipeline(transaction=False)
        for seq in range(first_seq + start, first_seq + min(count, start + CHUNK)):
            rid, uid = str(uuid.uuid4()), str(uuid.uuid4())
            pipe.hset(
                keys.request(rid),
                mapping={"id": rid, "user": uid, "uname": f"w{seq}", "kind": "chat", "aid": "",
                         "seq": seq, "created": now_ms, "state": "waiting", "offer": ""},
            )
            pipe.zadd(keys.general_line, {rid: seq})
            pipe.hset(keys.m("owner"), rid, uid)
            pipe.hset(keys.user(uid), "req", rid)
        await pipe.execute()
    await redis.set(keys.m("seq"), first_seq + count - 1)


class DecisionBench:
    """One steady state: `waiting` in the general line, `astrologers` online, all busy but one."""

    def __init__(self, redis: Redis, prefix: str, waiting: int, astrologers: int) -> None:
        self.redis = redis
        self.waiting = waiting
        self.astrologers = astrologers
        self.keys = Keys(f"{prefix}:scale-{waiting}-{astrologers}")
        self.store = Store(redis, self.keys)
        settings = Settings(redis_prefix=self.keys.prefix, offer_timeout_s=3600.0, max_wait_s=0.0)
        self.matcher = Matcher(settings, redis, pool=None)  # type: ignore[arg-type]  # decide() needs no PostgreSQL
        self.matcher.token = TOKEN
        self.ids = [str(uuid.uuid4()) for _ in range(astrologers)]
        self.offers: dict[str, str] = {}
        self.samples: list[float] = []
        self.first_decision_s = 0.0

    async def setup(self) -> None:
        keys, store = self.keys, self.store
        await self.redis.set(keys.fence, TOKEN)
        await self.redis.set(keys.alive, "1")
        await self.redis.hset(keys.flow, mapping={"top_flow": "on", "boost": "2.0"})
        upsert, status = store._scripts["upsert_astrologer"], store._scripts["status"]
        for script in (upsert, status):
            await self.redis.script_load(script.source)  # the pipeline calls them by SHA1
        for start in range(0, self.astrologers, CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for aid in self.ids[start : start + CHUNK]:
                pipe.evalsha(upsert.sha, 1, keys.match, aid, f"a-{aid[:6]}", "1.0", 1, 0, 1)
                pipe.evalsha(status.sha, 1, keys.match, aid, "online", "", "", "null")
            await pipe.execute()
        # Every astrologer gets one offer first (capacity 1: all busy), `waiting` stay in line.
        await _fill_line(self.redis, keys, self.waiting + self.astrologers, 1)
        await self.redis.delete(keys.outbox)
        started = time.perf_counter()
        made = await self.matcher.decide()
        self.first_decision_s = time.perf_counter() - started
        if made != self.astrologers:
            raise RuntimeError(f"the first decision made {made} offers, expected {self.astrologers}")
        self.offers = await _last_offers(self.redis, keys)

    async def round(self) -> None:
        """One astrologer accepts and ends a session; a new request joins; one decision, timed."""
        aid = self.ids[len(self.samples) % len(self.ids)]
        session_id = str(uuid.uuid4())
        await self.store.answer(aid, self.offers[aid], "accept", session_id, "", "", None)
        await self.store.end(aid, "astrologer", session_id, "", "", None)
        await self.store.request(str(uuid.uuid4()), "late", str(uuid.uuid4()), "chat", None, "", "", None, 0)
        await self.redis.delete(self.keys.outbox)
        started = time.perf_counter()
        made = await self.matcher.decide()
        self.samples.append(time.perf_counter() - started)
        if made != 1:
            raise RuntimeError(f"a steady-state decision made {made} offers, expected 1")
        self.offers.update(await _last_offers(self.redis, self.keys))

    async def result(self) -> dict[str, Any]:
        return {"waiting": int(await self.redis.zcard(self.keys.general_line)), "astrologers": self.astrologers,
                "decide_us": _us(self.samples), "first_decision_ms": round(self.first_decision_s * 1000, 1)}

    async def close(self) -> None:
        found = [key async for key in self.redis.scan_iter(match=f"{self.keys.prefix}:*", count=5000)]
        for start in range(0, len(found), 5000):
            await self.redis.delete(*found[start : start + 5000])


async def decision_times(
    redis_url: str, prefix: str, configs: list[tuple[int, int, int]]
) -> dict[str, dict[str, Any]]:
    """(waiting, astrologers, rounds) each; rounds interleaved so a busy moment hits all alike."""
    redis = Redis.from_url(redis_url)
    benches = [DecisionBench(redis, prefix, w, a) for w, a, _ in configs]
    try:
        for bench in benches:
            await bench.setup()
        left = [rounds for _, _, rounds in configs]
        while any(left):
            for index, bench in enumerate(benches):
                if left[index]:
                    await bench.round()
                    left[index] -= 1
        return {f"{b.waiting}x{b.astrologers}": await b.result() for b in benches}
    finally:
        for bench in benches:
            await bench.close()
        await redis.aclose()


def pure_decision_time(waiting: int, astrologers: int, rounds: int) -> dict[str, Any]:
    """`flow.decide` alone: `astrologers` online, one slot free, the whole line passed in."""
    roster = tuple(
        flow.Astrologer(id=f"a{i:05d}", weight=1.0, capacity=1, load=0 if i == 0 else 1, idle_since_ms=i)
        for i in range(astrologers)
    )
    general = tuple(flow.Waiting(f"r{seq}", seq) for seq in range(waiting))
    snapshot = flow.FlowSnapshot(astrologers=roster, general=general, direct={})
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        decision = flow.decide(snapshot)
        samples.append(time.perf_counter() - started)
        assert len(decision.offers) == 1
    return {"waiting": waiting, "astrologers": astrologers, "decide_us": _us(samples)}
