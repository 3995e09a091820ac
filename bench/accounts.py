"""Accounts for the bench, written straight into PostgreSQL.

Registering thousands of accounts through the API would spend the run on
deliberately slow password hashing; the rows are the same ones `register`
and the admin API write, with one precomputed argon2 hash. Astrologers are
written before `astroq matcher` starts: it finds Redis empty for the run's
prefix and rebuilds live state from these rows. Tokens are minted by the load
generator with the run's key, exactly as the gateway would issue them.
"""

from __future__ import annotations

import secrets
import uuid
from server import db
from server.auth import hash_password


async def create(database_url: str, groups: dict[str, tuple[str, int, int]]) -> dict[str, list[str]]:
    """Creates each group: name -> (role, count, capacity); returns name -> ids in order."""
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        await db.migrate(pool)
        password_hash = await hash_password(secrets.token_urlsafe(12))
        made: dict[str, list[str]] = {}
        users: list[tuple[uuid.UUID, str, str, str, str]] = []
        astrologers: list[tuple[uuid.UUID, int]] = []
        for group, (role, count, capacity) in groups.items():
            ids = []
            for i in range(count):
                uid = uuid.uuid4()
                ids.append(str(uid))
                users.append((uid, f"{group}{i}-{uid.hex[:8]}@bench.test", f"{group}{i}", role, password_hash))
                if role == "astrologer":
                    astrologers.append((uid, capacity))
            made[group] = ids
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "users", records=users, columns=["id", "email", "name", "role", "password_hash"]
                )
                await conn.copy_records_to_table(
                    "astrologers", records=astrologers, columns=["id", "capacity"]
                )
        return made
    finally:
        await pool.close()

