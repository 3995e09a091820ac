"""matcher/rebuild.py on real Redis and PostgreSQL: only the current lease holder rebuilds."""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from matcher.keys import Keys
from matcher.rebuild import rebuild
from matcher.store import Fenced, Store
from server import db


@pytest.fixture
async def stores(store_urls: tuple[str, str]) -> AsyncIterator[tuple[Redis, asyncpg.Pool, Keys]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pool = await db.create_pool(store_urls[0], schema=schema, min_size=1, max_size=4)
    await db.migrate(pool, schema=schema)
    redis = Redis.from_url(store_urls[1])
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    try:
        yield redis, pool, keys
    finally:
        async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()


async def test_a_matcher_that_lost_its_lease_does_not_rebuild(
    stores: tuple[Redis, asyncpg.Pool, Keys],
) -> None:
    redis, pool, keys = stores
    store = Store(redis, keys)
    old = (await store.lease("m1", 50)).token
    await redis.delete(keys.m("lease"))  # m1's lease lapsed; m2 takes over
    new = (await store.lease("m2", 5000)).token
    assert new != old
    with pytest.raises(Fenced):
        await rebuild(redis, pool, keys, old, grace_ms=1000, max_wait_ms=0)
    assert not await redis.exists(keys.alive)  # nothing written
    assert await rebuild(redis, pool, keys, new, grace_ms=1000, max_wait_ms=0) == 0
    assert await redis.exists(keys.alive)


async def test_after_a_data_loss_only_a_new_lease_may_rebuild(
    stores: tuple[Redis, asyncpg.Pool, Keys],
) -> None:
    redis, pool, keys = stores
    store = Store(redis, keys)
    before = (await store.lease("m1", 5000)).token
    async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
        await redis.delete(key)  # Redis lost everything, the fencing token too
    with pytest.raises(Fenced):
        await rebuild(redis, pool, keys, before, grace_ms=1000, max_wait_ms=0)
    after = (await store.lease("m1", 5000)).token
    assert int(after) > int(before)
    await rebuild(redis, pool, keys, after, grace_ms=1000, max_wait_ms=0)
    assert await redis.exists(keys.alive)


async def test_an_admin_change_made_while_the_rebuild_reads_is_not_undone(
    stores: tuple[Redis, asyncpg.Pool, Keys],
) -> None:
    """The rebuild reads the record, an admin changes an astrologer (PostgreSQL, then
    Redis), then the rebuild writes: it must not put the old capacity back."""
    redis, pool, keys = stores
    store = Store(redis, keys)
    aid = str(uuid.uuid4())
    async with pool.acquire() as conn:
        await db.insert_user(conn, aid, f"{aid}@example.com", "Vega", "astrologer", "x")
        await conn.execute("INSERT INTO astrologers (id, capacity) VALUES ($1, 1)", aid)
    token = (await store.lease("m1", 5000)).token
    async with pool.acquire() as blocker:
        async with blocker.transaction():
            # The rebuild reads the astrologers, then waits here, at the sessions.
            await blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(rebuild(redis, pool, keys, token, grace_ms=1000, max_wait_ms=0))
            async with pool.acquire() as watcher:  # pg_stat_activity is fixed within a transaction
                while not await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FROM sessions s%'"
                ):
                    assert not task.done(), task
                    await asyncio.sleep(0.01)
            async with pool.acquire() as admin:  # what PATCH /admin/astrologers does
                await admin.execute("UPDATE astrologers SET capacity = 3 WHERE id = $1", aid)
            await store.upsert_astrologer(aid, "Vega", 1.0, 3, False, True)
    await task
    assert await redis.hget(keys.m(f"ast:{aid}"), "capacity") == b"3"
    assert await redis.exists(keys.alive)
