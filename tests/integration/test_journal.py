"""The journal's one statement (server/migrations/002_journal.sql) on real PostgreSQL:
a batch holds rows in the order the Lua scripts wrote them, and applying it twice
(a matcher that died after the commit, before it trimmed the outbox) changes nothing."""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import asyncpg
import pytest

from matcher.journal import write_rows
from server import db

T0 = 1_733_300_000_000  # ms, as Redis' clock gives it


@pytest.fixture
async def pool(store_urls: tuple[str, str]) -> AsyncIterator[asyncpg.Pool]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pool = await db.create_pool(store_urls[0], schema=schema, min_size=1, max_size=2)
    await db.migrate(pool, schema=schema)
    try:
        yield pool
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()


async def _accounts(conn: asyncpg.Connection) -> tuple[str, str]:
    user, astrologer = str(uuid.uuid4()), str(uuid.uuid4())
    for account, role in ((user, "user"), (astrologer, "astrologer")):
        await conn.execute(
            "INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, 'n', $3, 'x')",
            account, f"{account}@example.com", role,
        )
    await conn.execute("INSERT INTO astrologers (id) VALUES ($1)", astrologer)
    return user, astrologer


async def _apply_twice(pool: asyncpg.Pool, rows: dict[str, list[Any]]) -> None:
    for _ in range(2):
        async with pool.acquire() as conn:
            await write_rows(conn, rows)


async def test_a_whole_match_in_one_batch_is_recorded_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        user, astrologer = await _accounts(conn)
    rid, oid, sid = (str(uuid.uuid4()) for _ in range(3))
    await _apply_twice(pool, {
        "req": [{"id": rid, "user": user, "kind": "chat", "aid": "", "seq": 7, "at": T0}],
        "offer": [{"id": oid, "rid": rid, "aid": astrologer, "direct": False,
                   "at": T0 + 1, "exp": T0 + 15_001}],
        "sess": [{"id": sid, "rid": rid, "user": user, "aid": astrologer, "kind": "chat",
                  "at": T0 + 2}],
        "offer_end": [{"id": oid, "outcome": "accepted", "at": T0 + 2},
                      {"id": oid, "outcome": "withdrawn", "at": T0 + 3}],
        "req_end": [{"id": rid, "state": "assigned", "reason": "", "at": T0 + 2}],
        "sess_end": [{"id": sid, "at": T0 + 9, "by": "user"}],
    })
    async with pool.acquire() as conn:
        request = await conn.fetchrow("SELECT * FROM requests")
        offer = await conn.fetchrow("SELECT * FROM offers")
        session = await conn.fetchrow("SELECT * FROM sessions")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM requests) r, (SELECT count(*) FROM offers) o,"
            " (SELECT count(*) FROM sessions) s"
        )
    assert tuple(counts) == (1, 1, 1)
    assert request["astrologer_id"] is None and request["seq"] == 7
    assert (request["state"], request["reason"]) == ("assigned", None)
    assert request["created_at"].timestamp() * 1000 == T0
    assert offer["outcome"] == "accepted"  # the first end wins, as it happened first
    assert (offer["answered_at"].timestamp() * 1000, offer["expires_at"].timestamp() * 1000) == (
        T0 + 2, T0 + 15_001)
    assert (session["ended_by"], session["ended_at"].timestamp() * 1000) == ("user", T0 + 9)


async def test_a_later_batch_cannot_move_an_ended_row_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        user, _ = await _accounts(conn)
    rid = str(uuid.uuid4())
    await _apply_twice(pool, {
        "req": [{"id": rid, "user": user, "kind": "call", "aid": "", "seq": 1, "at": T0}],
        "req_end": [{"id": rid, "state": "cancelled", "reason": "max_wait", "at": T0 + 5}],
    })
    await _apply_twice(pool, {"req_end": [{"id": rid, "state": "assigned", "reason": "", "at": T0 + 6}]})
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, reason, ended_at FROM requests")
    assert (row["state"], row["reason"], row["ended_at"].timestamp() * 1000) == (
        "cancelled", "max_wait", T0 + 5)


async def test_every_status_change_is_kept_and_the_astrologer_keeps_the_last(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        _, astrologer = await _accounts(conn)
    changes = [
        {"aid": astrologer, "status": status, "reason": reason, "at": T0 + i}
        for i, (status, reason) in enumerate(
            [("online", "client"), ("break", "missed"), ("online", "client"), ("offline", "grace")]
        )
    ]
    async with pool.acquire() as conn:
        await write_rows(conn, {"status": changes})
        history = await conn.fetch("SELECT status, reason FROM status_changes ORDER BY id")
        status = await conn.fetchval("SELECT status FROM astrologers")
    assert [tuple(r) for r in history] == [(c["status"], c["reason"]) for c in changes]
    assert status == "offline"


async def test_a_row_the_record_refuses_fails_the_whole_batch(pool: asyncpg.Pool) -> None:
    """The journal then retries entry by entry; a half-applied batch would be lost."""
    async with pool.acquire() as conn:
        user, _ = await _accounts(conn)
    good, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        async with pool.acquire() as conn:
            await write_rows(conn, {
                "req": [
                    {"id": good, "user": user, "kind": "chat", "aid": "", "seq": 1, "at": T0},
                    {"id": orphan, "user": str(uuid.uuid4()), "kind": "chat", "aid": "",
                     "seq": 2, "at": T0},
                ],
            })
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM requests") == 0


async def test_each_astrologers_assignments_are_counted_per_utc_day_once(pool: asyncpg.Pool) -> None:
    """assignments_daily (migration 003) holds what counting sessions per UTC day gives:
    a batch applied twice counts once, and a deleted session is uncounted."""
    async with pool.acquire() as conn:
        user, astrologer = await _accounts(conn)
    day = 86_400_000
    midnight = T0 - T0 % day
    starts = [midnight - 1, midnight, midnight + 1, midnight + day - 1]  # 1 yesterday, 3 today
    batch: dict[str, list[Any]] = {"req": [], "sess": []}
    for seq, at in enumerate(starts):
        rid = str(uuid.uuid4())
        batch["req"].append({"id": rid, "user": user, "kind": "chat", "aid": "", "seq": seq, "at": at})
        batch["sess"].append({"id": str(uuid.uuid4()), "rid": rid, "user": user, "aid": astrologer,
                              "kind": "chat", "at": at})
    await _apply_twice(pool, batch)

    counted = "SELECT day::text, assigned FROM assignments_daily WHERE astrologer_id = $1 ORDER BY day"
    from_sessions = (
        "SELECT (started_at AT TIME ZONE 'UTC')::date::text, count(*) FROM sessions"
        " WHERE astrologer_id = $1 GROUP BY 1 ORDER BY 1"
    )
    async with pool.acquire() as conn:
        rows = [tuple(r) for r in await conn.fetch(counted, astrologer)]
        assert rows == [tuple(r) for r in await conn.fetch(from_sessions, astrologer)]
        assert [n for _, n in rows] == [1, 3]
        await conn.execute("DELETE FROM sessions WHERE started_at = astroq_ms($1)", midnight)
        rows = [tuple(r) for r in await conn.fetch(counted, astrologer)]
        assert [n for _, n in rows] == [1, 2]
        assert rows == [tuple(r) for r in await conn.fetch(from_sessions, astrologer)]
