"""PostgreSQL: the pool, migrations, and the account and admin queries.

Every statement takes its values as parameters; SQL is never built from input.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import asyncpg

_MIGRATION_LOCK = 0x61737472  # pg advisory lock id: serialises concurrent migrators
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Given to the pool, this replaces asyncpg's reset query (RESET ALL, UNLISTEN,
    CLOSE ALL, advisory unlocks): a round trip on every release, and astroq leaves
    none of that behind (its only lock is transaction-scoped). An open transaction
    is still rolled back by the pool."""


async def create_pool(
    dsn: str, schema: str | None = None, min_size: int = 2, max_size: int = 20
) -> asyncpg.Pool:
    settings = {"application_name": "astroq"}
    if schema:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"bad schema name {schema!r}")
        settings["search_path"] = schema
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings=settings,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in resources.files("server").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool, schema: str | None = None) -> list[int]:
    """Applies the migrations not yet applied; safe when several processes start at once."""
    applied: list[int] = []
    # One transaction under a transaction-scoped lock: the lock cannot outlive it,
    # whatever interrupts the migration, and a failed migration leaves nothing.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        if schema:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError(f"bad schema name {schema!r}")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in _migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    return applied


# ---- accounts ------------------------------------------------------------------

USER_COLUMNS = "id::text AS id, email, name, role"
ASTROLOGER_COLUMNS = (
    "u.id::text AS id, u.name, u.email, a.is_top, a.weight, a.capacity, a.flow_enabled,"
    " a.languages, a.status"
)


def user_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "email": row["email"], "name": row["name"], "role": row["role"]}


async def insert_user(
    conn: asyncpg.Connection, user_id: str, email: str, name: str, role: str, password_hash: str
) -> dict[str, Any] | None:
    """Returns the new user, or None when the email is taken."""
    row = await conn.fetchrow(
        f"INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5)"
        f" ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}",
        user_id,
        email,
        name,
        role,
        password_hash,
    )
    return user_dict(row) if row else None


async def user_by_email(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1", email
    )


async def user_by_id(conn: asyncpg.Connection, user_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return user_dict(row) if row else None


async def astrologer_by_id(conn: asyncpg.Connection, astrologer_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {ASTROLOGER_COLUMNS} FROM astrologers a JOIN users u ON u.id = a.id"
        " WHERE a.id = $1",
        astrologer_id,
    )
    return dict(row) if row else None


async def all_astrologers(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {ASTROLOGER_COLUMNS} FROM astrologers a JOIN users u ON u.id = a.id"
        " ORDER BY u.name, u.id"
    )
    return [dict(r) for r in rows]


async def insert_refresh(conn: asyncpg.Connection, jti: str, user_id: str, expires_at: Any) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)",
        jti,
        user_id,
        expires_at,
    )


async def use_refresh(conn: asyncpg.Connection, jti: str) -> str | None:
    """Marks a refresh token used; None when it was unknown, expired or already used."""
    row = await conn.fetchrow(
        "UPDATE refresh_tokens SET used_at = now()"
        " WHERE jti = $1 AND used_at IS NULL AND expires_at > now()"
        " RETURNING user_id::text",
        jti,
    )
    return row["user_id"] if row else None


async def audit(
    conn: asyncpg.Connection,
    admin_id: str | None,
    action: str,
    target_id: str | None,
    before: Any,
    after: Any,
) -> None:
    await conn.execute(
        "INSERT INTO admin_changes (admin_id, action, target_id, before, after)"
        " VALUES ($1, $2, $3, $4, $5)",
        admin_id,
        action,
        target_id,
        before,
        after,
    )


async def flow_settings(conn: asyncpg.Connection) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT top_flow, boost FROM flow_settings WHERE id = 1")
    return {"top_flow": row["top_flow"], "boost": row["boost"]}
