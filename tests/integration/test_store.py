"""Lua scripts at sizes the protocol tests do not reach, on real Redis."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any, AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from matcher.aio import REDIS_DOWN
from matcher.journal import FANOUT_ACCOUNT
from matcher.keys import Keys
from matcher.loop import ROSTER_SWEEP_S, SWEEP_MOST_PER_TURN, Matcher, RosterSweep, _astrologer
from matcher.positions import FANOUT_PER_PASS, Positions
from matcher.store import Store
from server.errors import AstroqError
from server.settings import Settings
from server.ws import ScriptBatcher


@pytest.fixture
async def live(store_urls: tuple[str, str]) -> AsyncIterator[tuple[Redis, Keys]]:
    """A Redis client and a key prefix of the test's own, deleted afterwards."""
    redis = Redis.from_url(store_urls[1])
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    try:
        yield redis, keys
    finally:
        async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_lines_reads_a_line_longer_than_luas_unpack_limit(live: tuple[Redis, Keys]) -> None:
    redis, keys = live
    pipe = redis.pipeline(transaction=False)
    for i in range(12_000):
        pipe.zadd(keys.general_line, {f"r{i}": i})
        pipe.hset(keys.m("owner"), f"r{i}", f"u{i}")
    await pipe.execute()
    general = (await Store(redis, keys).lines())["general"]
    assert len(general) == 24_000
    assert general[:4] == ["r0", "u0", "r1", "u1"] and general[-2:] == ["r11999", "u11999"]


async def test_scripts_come_back_after_script_flush(live: tuple[Redis, Keys]) -> None:
    redis, keys = live
    store = Store(redis, keys)
    assert (await store.lease("m1", 1000)).held
    await redis.script_flush()
    assert (await store.lease("m1", 1000)).held  # reloaded transparently
    # the matcher's pipelined calls, too: each script runs once
    token = (await store.lease("m1", 1000)).token
    await redis.set(keys.alive, "1")
    await redis.script_flush()
    turn = await store.turn("0-0", None, token, 3, 10, 10, always_snapshot=True)
    assert turn.alive and turn.timers == (-1, False)
    assert turn.snapshot is not None and turn.snapshot["general"] in ([], {})
    await redis.script_flush()
    made, entries, own_id = await store.commit_and_outbox(token, 1000, b"{}", [], "0-0")
    assert made == 0 and entries == [] and own_id == ""  # nothing to record: no entry


async def test_a_turn_snapshots_only_what_changed_and_wakes_with_it(live: tuple[Redis, Keys]) -> None:
    redis, keys = live
    store = Store(redis, keys)
    token = (await store.lease("m1", 10_000)).token
    await redis.set(keys.alive, "1")
    last = await redis.xadd(keys.outbox, {"d": b"{}"})
    quiet = await store.turn(last.decode(), None, token, 3, 10, 10, always_snapshot=False)
    assert quiet.alive and quiet.entries == [] and quiet.snapshot is None
    owed = await store.turn(last.decode(), None, token, 3, 10, 10, always_snapshot=True)
    assert owed.snapshot is not None
    # Quiet entries (an accept's) come back without a snapshot; a change after them brings one.
    first = last
    for _ in range(3):
        last = await redis.xadd(keys.outbox, {"d": b"{}", "q": b"1"})
    skipped = await store.turn(first.decode(), None, token, 3, 10, 10, always_snapshot=False)
    assert len(skipped.entries) == 3 and skipped.snapshot is None
    changed = await redis.xadd(keys.outbox, {"d": b"{}"})
    assert (await store.turn(first.decode(), None, token, 3, 10, 10, always_snapshot=False)).snapshot
    await redis.xdel(keys.outbox, changed)
    # Blocked on the outbox: the entry that ends the wait comes with a snapshot taken after it.
    waiting = asyncio.create_task(store.turn(last.decode(), 5_000, token, 3, 10, 10, always_snapshot=False))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await redis.xadd(keys.outbox, {"d": b"{}"})
    woke = await asyncio.wait_for(waiting, 2.0)
    assert len(woke.entries) == 1 and woke.snapshot is not None
    await redis.delete(keys.alive)
    assert not (await store.turn(last.decode(), None, token, 3, 10, 10, always_snapshot=True)).alive


async def test_the_gateways_batched_scripts_come_back_after_script_flush(
    live: tuple[Redis, Keys],
) -> None:
    redis, keys = live
    batcher = ScriptBatcher(redis)
    store = Store(batcher, keys)  # type: ignore[arg-type]  # as the gateway does
    await redis.script_flush()
    # one batch: both callers hear NOSCRIPT, load the script and call again
    first, second = await asyncio.gather(
        store.enqueue("u1", b"frame-1", "g1", 1000), store.enqueue("u2", b"frame-2", "g1", 1000)
    )
    assert (first, second) == (b"frame-1", b"frame-2")  # each took its free queue
    assert await store.enqueue("u1", b"frame-3", "g1", 1000) is None  # u1's is held
    assert await store.next_frame("u1", "g1", 1000) == b"frame-3"
    # in one batch, a script's own error reaches its caller alone
    replies: list[object] = await asyncio.gather(
        store.next_frame("u2", "g1", 1000), batcher.evalsha("0" * 40, 0), return_exceptions=True
    )
    released, unknown = replies
    assert released is None and isinstance(unknown, NoScriptError)
    assert await store.enqueue("u2", b"frame-4", "g1", 1000) == b"frame-4"  # u2's was released


async def test_a_batch_that_redis_does_not_answer_fails_within_its_deadline_and_the_next_works(
    live: tuple[Redis, Keys],
) -> None:
    redis, keys = live
    batcher = ScriptBatcher(redis, timeout_s=0.3)
    store = Store(batcher, keys)  # type: ignore[arg-type]  # as the gateway does
    assert await store.enqueue("u1", b"frame-1", "g1", 1000) == b"frame-1"
    await redis.execute_command("CLIENT", "PAUSE", "800", "ALL")  # Redis answers nobody
    replies = await asyncio.gather(
        store.next_frame("u1", "g1", 1000), store.enqueue("u2", b"frame-2", "g1", 1000),
        return_exceptions=True,
    )
    assert all(isinstance(reply, REDIS_DOWN) for reply in replies), replies  # the gateway's "store away"
    await asyncio.sleep(0.6)  # the pause is over
    # The connection that timed out is not reused with its replies unread: the next
    # batch hears its own replies.
    assert await store.enqueue("u3", b"frame-3", "g1", 1000) == b"frame-3"
    assert await store.next_frame("u3", "g1", 1000) is None


async def test_a_long_line_hears_its_positions_in_turns_and_none_is_starved(
    live: tuple[Redis, Keys],
) -> None:
    """More changed positions than one pass sends: oldest change first, each owner in turn."""
    redis, keys = live
    positions = Positions(Store(redis, keys), redis, keys)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events(FANOUT_ACCOUNT))
    size = 4_000
    turns = -(-size // FANOUT_PER_PASS)  # passes one change takes to reach every owner

    async def heard() -> dict[str, int]:
        shown: dict[str, int] = {}
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
            for line in message["data"].split(b"\n"):
                owner, _socket, _op, frame = line.split(b" ", 3)
                shown[owner.decode()] = orjson.loads(frame)["position"]
        return shown

    try:
        pipe = redis.pipeline(transaction=False)
        for i in range(size):
            pipe.zadd(keys.general_line, {f"r{i}": i})
            pipe.hset(keys.m("owner"), f"r{i}", f"u{i}")
        await pipe.execute()
        await heard()

        last_heard: dict[str, int] = {}
        for step in range(3 * turns):
            if step >= turns:
                # From here on someone leaves the head every pass: every place changes.
                await redis.zrem(keys.general_line, f"r{step - turns}")
            published = await positions.publish()
            frames = await heard()
            assert published["sent"] == len(frames) <= FANOUT_PER_PASS
            for owner, position in frames.items():
                assert position == int(owner[1:]) + 1 - max(0, step - turns + 1)
                last_heard[owner] = step
            if step == turns - 1:
                assert published["deferred"] == 0  # the whole line has heard its place
                assert len(last_heard) == size
            if step >= turns:
                waiting = [f"u{i}" for i in range(step - turns + 1, size)]
                assert all(step - last_heard[owner] < turns + 1 for owner in waiting)
    finally:
        await pubsub.aclose()


async def test_a_roster_kept_from_changed_rows_matches_a_whole_read(live: tuple[Redis, Keys]) -> None:
    """The matcher keeps the online astrologers' rows between turns and reads only
    those that changed (snapshot.lua, astdirty). Through a long random run of every
    script that changes an astrologer (status, capacity and weight, offers made,
    accepted, declined, expired and withdrawn, sessions ended, requests direct and
    general, breaks for missed offers), the kept roster and the direct lines it
    reads stay what a whole read finds, and the general line it reads starts with
    what a whole read takes."""
    redis, keys = live
    store = Store(redis, keys)
    token = (await store.lease("m1", 60_000)).token
    await redis.set(keys.alive, "1")
    await redis.hset(keys.flow, mapping={"top_flow": "on", "boost": "2.0"})
    settings = Settings(redis_prefix=keys.prefix, offer_timeout_s=0.05, max_wait_s=0.0)
    matcher = Matcher(settings, redis, pool=None)  # type: ignore[arg-type]  # decide() needs no PostgreSQL
    matcher.token = token
    rng = random.Random(7)
    astrologers = [str(uuid.uuid4()) for _ in range(8)]
    users = [str(uuid.uuid4()) for _ in range(30)]
    for aid in astrologers:
        await store.upsert_astrologer(aid, "a", 1.0, rng.randint(1, 3), rng.random() < 0.3, True)
        await store.set_status(aid, "online", "", "", None)
    matcher.roster = None

    async def kept() -> dict[str, Any]:
        free = None if matcher.roster is None else sum(a.capacity - a.load for a in matcher.roster.values())
        sweep = (matcher.sweep.cursor, rng.choice([0, 0, 1, 3]))  # the sweep changes nothing the roster says
        data = await store.snapshot(token, 64, roster_free=free, sweep=sweep)
        matcher._update_roster(data)
        return data

    await kept()
    for step in range(400):
        action = rng.choice(["request", "request", "decide", "answer", "answer", "end", "status",
                             "upsert", "expire"])
        try:
            if action == "request":
                target = rng.choice([None, None, rng.choice(astrologers)])
                await store.request(rng.choice(users), "u", str(uuid.uuid4()), "chat", target, "", "", None, 0)
            elif action == "decide":
                await matcher.decide()
            elif action == "answer":
                aid = rng.choice(astrologers)
                offers = await redis.smembers(keys.m(f"astoffers:{aid}"))
                if offers:
                    verb = rng.choice(["accept", "decline"])
                    await store.answer(aid, rng.choice(sorted(offers)).decode(), verb, str(uuid.uuid4()), "", "", None)
            elif action == "end":
                aid = rng.choice(astrologers)
                sessions = await redis.smembers(keys.m(f"astsess:{aid}"))
                if sessions:
                    await store.end(aid, "astrologer", rng.choice(sorted(sessions)).decode(), "", "", None)
            elif action == "status":
                await store.set_status(rng.choice(astrologers), rng.choice(["online", "online", "break", "offline"]), "", "", None)
            elif action == "upsert":
                await store.upsert_astrologer(rng.choice(astrologers), "a", rng.choice([0.5, 1.0, 2.0]),
                                              rng.randint(1, 3), rng.random() < 0.3, rng.random() < 0.8)
            else:
                await asyncio.sleep(0.06)  # open offers run out (offer_timeout_s 0.05)
                await store.timers(token, 2, 100)
        except AstroqError:
            pass  # refused as a client would be (already_open, offer_expired, ...): nothing changed
        data = await kept()
        whole = await store.snapshot(token, 64)
        free = {row[0]: _astrologer(row) for row in whole["astrologers"] or () if row[3] < row[2]}
        assert matcher.roster == free, (step, action)
        assert matcher.roster_free == sum(a.capacity - a.load for a in free.values()), (step, action)
        assert (data["direct"] or {}) == (whole["direct"] or {}), (step, action)
        general, whole_general = (g if isinstance(g, list) else [] for g in (data["general"], whole["general"]))
        assert general[: len(whole_general)] == whole_general, (step, action)


async def _kept_roster(live: tuple[Redis, Keys], online: int, capacity: int) -> tuple[Store, Matcher, list[str]]:
    """A leading matcher that holds the roster of `online` astrologers, read whole."""
    redis, keys = live
    store = Store(redis, keys)
    token = (await store.lease("m1", 60_000)).token
    await redis.set(keys.alive, "1")
    await redis.hset(keys.flow, mapping={"top_flow": "on", "boost": "2.0"})
    matcher = Matcher(Settings(redis_prefix=keys.prefix), redis, pool=None)  # type: ignore[arg-type]  # no PostgreSQL needed
    matcher.token = token
    astrologers = [str(uuid.uuid4()) for _ in range(online)]
    for aid in astrologers:
        await store.upsert_astrologer(aid, "a", 1.0, capacity, False, True)
        await store.set_status(aid, "online", "", "", None)
    matcher._update_roster(await store.snapshot(token, 64))
    assert matcher.roster is not None and set(matcher.roster) == set(astrologers)
    return store, matcher, astrologers


async def test_the_sweep_mends_a_row_that_missed_its_mark(live: tuple[Redis, Keys]) -> None:
    """A change that marked nothing (a script with its touch() missing) leaves the
    kept roster stale; one pass of the sweep over the online set, a few rows a
    snapshot, reads it again."""
    redis, keys = live
    store, matcher, astrologers = await _kept_roster(live, 60, 2)
    stale = astrologers[0]
    await redis.hset(keys.m(f"ast:{stale}"), "load", 2)  # full now, and not in astdirty

    def free() -> int:
        assert matcher.roster is not None
        return sum(a.capacity - a.load for a in matcher.roster.values())

    matcher._update_roster(await store.snapshot(matcher.token, 64, roster_free=free()))
    assert stale in (matcher.roster or {})  # without the sweep the row stays stale
    snapshots = 0
    while True:
        data = await store.snapshot(matcher.token, 64, roster_free=free(), sweep=(matcher.sweep.cursor, 8))
        assert data["changed_only"] and data["online"] == 60
        matcher._update_roster(data)
        snapshots += 1
        if matcher.sweep.cursor == "0":
            break
    assert snapshots > 1  # in parts, not a whole read
    whole = await store.snapshot(matcher.token, 64)
    assert matcher.roster == {row[0]: _astrologer(row) for row in whole["astrologers"] if row[3] < row[2]}
    assert stale not in matcher.roster


async def test_a_refused_offer_reads_its_astrologer_again(live: tuple[Redis, Keys]) -> None:
    """commit.lua refuses an offer to an astrologer the stale roster thought free and
    marks it changed, so the next snapshot reads its row; the roster is not read
    whole for it."""
    redis, keys = live
    store, matcher, (stale,) = await _kept_roster(live, 1, 1)
    await redis.hset(keys.m(f"ast:{stale}"), "load", 1)  # full now, and not in astdirty
    await store.request(str(uuid.uuid4()), "u", str(uuid.uuid4()), "chat", None, "", "", None, 0)
    assert await matcher.decide() == 0  # proposed on the stale row, refused
    assert matcher.roster is not None and stale in matcher.roster
    assert await matcher.decide() == 0
    assert matcher.roster == {}


def test_the_sweep_reads_the_online_set_once_in_its_time() -> None:
    sweep = RosterSweep(online=1_000)
    sweep.at -= ROSTER_SWEEP_S / 10
    cursor, count = sweep.ask()
    assert cursor == "0" and 100 <= count <= 101
    sweep.swept({"sweep": "17", "online": 1_000})
    assert sweep.cursor == "17" and 0 <= sweep.owed < 1
    sweep.at -= 100 * ROSTER_SWEEP_S  # a quiet spell banks no whole read
    assert sweep.ask() == ("17", SWEEP_MOST_PER_TURN)
    sweep.at += 100 * ROSTER_SWEEP_S
    assert sweep.ask()[1] == 0  # asked again at once: nothing owed yet
