"""Accounts that exist after start: the configured admin, and the demo accounts of `astroq dev`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from matcher.store import Store
from server import auth, db
from server.auth import Role


@dataclass(frozen=True)
class DemoAccount:
    email: str
    password: str
    name: str
    role: Role
    is_top: bool = False
    weight: float = 1.0
    capacity: int = 1


DEMO_PASSWORD = "stars-align"
DEMO_ACCOUNTS = (
    DemoAccount("admin@astroq.dev", DEMO_PASSWORD, "Ada Admin", Role.ADMIN),
    DemoAccount("vega@astroq.dev", DEMO_PASSWORD, "Vega", Role.ASTROLOGER, is_top=True, weight=2),
    DemoAccount("lyra@astroq.dev", DEMO_PASSWORD, "Lyra", Role.ASTROLOGER, capacity=2),
    DemoAccount("orion@astroq.dev", DEMO_PASSWORD, "Orion", Role.ASTROLOGER),
    DemoAccount("nova@astroq.dev", DEMO_PASSWORD, "Nova", Role.ASTROLOGER),
    DemoAccount("sam@astroq.dev", DEMO_PASSWORD, "Sam", Role.USER),
    DemoAccount("kim@astroq.dev", DEMO_PASSWORD, "Kim", Role.USER),
)


async def ensure_admin(pool: asyncpg.Pool, email: str, password: str, name: str = "Admin") -> str:
    """Creates the admin, or resets its password and role; returns its id."""
    password_hash = await auth.hash_password(password)
    async with pool.acquire() as conn:
        return str(
            await conn.fetchval(
                "INSERT INTO users (id, email, name, role, password_hash)"
                " VALUES ($1, $2, $3, 'admin', $4)"
                " ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash,"
                " role = 'admin' RETURNING id::text",
                str(uuid.uuid4()),
                email.strip().lower(),
                name,
                password_hash,
            )
        )


async def seed_demo(pool: asyncpg.Pool, store: Store) -> None:
    """Idempotent: accounts that exist already are left as they are."""
    for account in DEMO_ACCOUNTS:
        async with pool.acquire() as conn:
            if await db.user_by_email(conn, account.email) is not None:
                continue
        password_hash = await auth.hash_password(account.password)
        user_id = str(uuid.uuid4())
        async with pool.acquire() as conn:
            async with conn.transaction():
                user = await db.insert_user(
                    conn, user_id, account.email, account.name, account.role.value, password_hash
                )
                if user is None or account.role is not Role.ASTROLOGER:
                    continue
                await conn.execute(
                    "INSERT INTO astrologers (id, is_top, weight, capacity) VALUES ($1, $2, $3, $4)",
                    user_id,
                    account.is_top,
                    account.weight,
                    account.capacity,
                )
        if account.role is Role.ASTROLOGER:
            await store.upsert_astrologer(
                user_id, account.name, account.weight, account.capacity, account.is_top, True
            )
