"""Rebuilds the live state in Redis from PostgreSQL after Redis lost its data.

PostgreSQL holds every request that was acknowledged (SPEC §6), with its place
(`seq`) in its line; the rebuild puts each open request back in the same order.
Offers that were open are ended as `returned` and their requests wait again at
their old place. Sessions that were open stay open. Every account with a live
request or session, and every astrologer not offline, gets a fresh reconnect
grace: gateways register their sockets again within a heartbeat and cancel it.

Only the holder of the current fencing token rebuilds, and the live state is
written only if the token is still the same when it is (WATCH): a matcher that
lost its lease, or learnt of the loss late, must not write a second rebuild over
a standby that has already rebuilt and matched since.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import WatchError

from matcher.keys import Keys
from matcher.store import Fenced
from server import metrics
from server.errors import Unavailable

log = logging.getLogger("astroq.rebuild")
REBUILD_ATTEMPTS = 10


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


async def _holds(client: Any, keys: Keys, token: str) -> bool:
    """Whether `token` is the current fencing token (a Redis client or a watching pipeline)."""
    current = await client.get(keys.fence)
    return current is not None and current.decode() == token


async def _read_record(pool: asyncpg.Pool) -> dict[str, Any]:
    """What live state is rebuilt from. Open offers end as `returned` here."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            returned = await conn.fetch(
                "UPDATE offers SET outcome = 'returned', answered_at = now()"
                " WHERE outcome IS NULL RETURNING id::text, astrologer_id::text"
            )
            astrologers = await conn.fetch(
                "SELECT a.id::text AS id, u.name, a.weight, a.capacity, a.is_top,"
                " a.flow_enabled, a.status FROM astrologers a JOIN users u ON u.id = a.id"
            )
            requests = await conn.fetch(
                "SELECT r.id::text AS id, r.user_id::text AS user_id, u.name AS uname, r.kind,"
                " coalesce(r.astrologer_id::text, '') AS aid, r.seq, r.created_at"
                " FROM requests r JOIN users u ON u.id = r.user_id"
                " WHERE r.state = 'open' ORDER BY r.seq"
            )
            sessions = await conn.fetch(
                "SELECT s.id::text AS id, s.request_id::text AS rid, s.user_id::text AS user_id,"
                " u.name AS uname, s.astrologer_id::text AS aid, a.name AS aname, s.kind,"
                " s.started_at FROM sessions s JOIN users u ON u.id = s.user_id"
                " JOIN users a ON a.id = s.astrologer_id WHERE s.ended_at IS NULL"
            )
            # Who already declined or missed each waiting request: not offered it again.
            excluded = await conn.fetch(
                "SELECT DISTINCT o.request_id::text AS rid, o.astrologer_id::text AS aid"
                " FROM offers o JOIN requests r ON r.id = o.request_id"
                " WHERE r.state = 'open' AND r.astrologer_id IS NULL"
                " AND o.outcome IN ('declined', 'expired')"
            )
            flow = await conn.fetchrow("SELECT top_flow, boost FROM flow_settings WHERE id = 1")
            max_seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM requests")

    return {
        "returned": returned, "astrologers": astrologers, "requests": requests,
        "sessions": sessions, "excluded": excluded, "flow": flow, "max_seq": max_seq,
    }


def _write_live_state(
    pipe: Any, keys: Keys, record: dict[str, Any], returned: list[Any], grace_ms: int, max_wait_ms: int
) -> None:
    """Queues the whole live state on a MULTI pipeline, `alive` last."""
    now_ms = int(time.time() * 1000)
    astrologers, requests, sessions = record["astrologers"], record["requests"], record["sessions"]
    excluded, flow, max_seq = record["excluded"], record["flow"], record["max_seq"]
    load: dict[str, int] = {}
    for s in sessions:
        load[s["aid"]] = load.get(s["aid"], 0) + 1
    m = keys.m
    for a in astrologers:
        aid = a["id"]
        pipe.hset(
            m(f"ast:{aid}"),
            mapping={
                "name": a["name"],
                "weight": repr(float(a["weight"])),
                "capacity": a["capacity"],
                "is_top": int(a["is_top"]),
                "flow_enabled": int(a["flow_enabled"]),
                "status": a["status"],
                "load": load.get(aid, 0),
                "missed": 0,
                "idle": 0,
            },
        )
        pipe.sadd(m("asts"), aid)
        if a["status"] == "online":
            pipe.sadd(m("online"), aid)
        if a["status"] != "offline":
            pipe.zadd(m("deadline:grace"), {aid: now_ms + grace_ms})
    for offer in returned:
        pipe.set(m(f"offerdone:{offer['id']}"), offer["astrologer_id"], px=3_600_000)
    for r in requests:
        rid, aid = r["id"], r["aid"]
        pipe.hset(
            m(f"req:{rid}"),
            mapping={
                "id": rid,
                "user": r["user_id"],
                "uname": r["uname"],
                "kind": r["kind"],
                "aid": aid,
                "seq": r["seq"],
                "created": _ms(r["created_at"]),
                "state": "waiting",
                "offer": "",
            },
        )
        pipe.zadd(m(f"line:{aid}" if aid else "line:general"), {rid: r["seq"]})
        if aid:
            pipe.sadd(m("directs"), aid)  # snapshot.lua reads these lines (lib.lua)
        pipe.hset(m("owner"), rid, r["user_id"])
        pipe.hset(m(f"user:{r['user_id']}"), "req", rid)
        pipe.zadd(m("deadline:grace"), {r["user_id"]: now_ms + grace_ms})
        if max_wait_ms > 0:
            pipe.zadd(m("deadline:wait"), {rid: _ms(r["created_at"]) + max_wait_ms})
    for e in excluded:
        pipe.sadd(m(f"excl:{e['rid']}"), e["aid"])
    for s in sessions:
        pipe.hset(
            m(f"sess:{s['id']}"),
            mapping={
                "rid": s["rid"],
                "user": s["user_id"],
                "uname": s["uname"],
                "aid": s["aid"],
                "aname": s["aname"],
                "kind": s["kind"],
                "started": _ms(s["started_at"]),
            },
        )
        pipe.sadd(m(f"astsess:{s['aid']}"), s["id"])
        pipe.hset(m(f"user:{s['user_id']}"), "sess", s["id"])
    pipe.hset(m("flow"), mapping={"top_flow": flow["top_flow"], "boost": repr(flow["boost"])})
    pipe.set(m("seq"), max_seq)
    pipe.set(keys.alive, "1")


async def rebuild(
    redis: Redis, pool: asyncpg.Pool, keys: Keys, token: str, *, grace_ms: int, max_wait_ms: int
) -> int:
    """Writes the live state in one MULTI; returns the number of open requests
    restored. Raises Fenced if `token` is not, or is no longer, the current one.

    From before PostgreSQL is read until EXEC, the fencing token and the config
    version are under WATCH. An admin change (the flow, an astrologer) writes
    PostgreSQL first and then bumps the version with its Redis write, so one that
    landed after the read aborts the write, and the record is read again: the
    rebuild can never put back a value older than one already in Redis.
    """
    returned: list[Any] = []  # ended in PostgreSQL by any attempt, so told to every one
    for _attempt in range(REBUILD_ATTEMPTS):
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.fence, keys.config)
            if not await _holds(pipe, keys, token):
                raise Fenced()
            record = await _read_record(pool)
            returned += record["returned"]
            pipe.multi()
            _write_live_state(pipe, keys, record, returned, grace_ms, max_wait_ms)
            try:
                await pipe.execute()
                break
            except WatchError:
                continue  # the lease changed hands (the next look says so) or the config did
    else:
        raise Unavailable("admin changes kept coming during the rebuild; it will be tried again")
    metrics.REBUILDS.inc()
    log.info(
        "rebuilt live state from PostgreSQL: %d open requests, %d sessions, %d offers returned",
        len(record["requests"]),
        len(record["sessions"]),
        len(returned),
    )
    return len(record["requests"])
