"""Lua scripts at sizes the protocol tests do not reach, on real Redis."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from matcher.keys import Keys
from matcher.store import Store


async def test_lines_reads_a_line_longer_than_luas_unpack_limit(store_urls: tuple[str, str]) -> None:
    redis = Redis.from_url(store_urls[1])
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    try:
        pipe = redis.pipeline(transaction=False)
        for i in range(12_000):
            pipe.zadd(keys.general_line, {f"r{i}": i})
            pipe.hset(keys.m("owner"), f"r{i}", f"u{i}")
        await pipe.execute()
        general = (await Store(redis, keys).lines())["general"]
        assert len(general) == 24_000
        assert general[:4] == ["r0", "u0", "r1", "u1"] and general[-2:] == ["r11999", "u11999"]
    finally:
        async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_scripts_come_back_after_script_flush(store_urls: tuple[str, str]) -> None:
    redis = Redis.from_url(store_urls[1])
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    store = Store(redis, keys)
    try:
        assert (await store.lease("m1", 1000)).held
        await redis.script_flush()
        assert (await store.lease("m1", 1000)).held  # reloaded transparently
    finally:
        async for key in redis.scan_iter(match=f"{keys.prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
