"""Migrations on real PostgreSQL: several processes may start at once."""

from __future__ import annotations

import asyncio
import uuid

from server import db


async def test_concurrent_migrators_apply_each_migration_once(store_urls: tuple[str, str]) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pools = [await db.create_pool(store_urls[0], schema=schema, min_size=1, max_size=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(pool, schema=schema) for pool in pools))
        versions = [version for version, _ in db._migrations()]
        assert sorted(results, key=len) == [[], [], versions]
        assert await db.migrate(pools[0], schema=schema) == []
        # the transaction-scoped lock went with its transaction: no session keeps it
        pids = [await pool.fetchval("SELECT pg_backend_pid()") for pool in pools]
        held = await pools[0].fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = ANY($1)", pids
        )
        assert held == 0
    finally:
        async with pools[0].acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for pool in pools:
            await pool.close()
