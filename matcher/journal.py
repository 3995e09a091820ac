"""The outbox: committed transitions go to PostgreSQL, then their frames go out.

Every Lua script that changes live state appends one entry to the outbox
stream in the same atomic step. The active matcher reads the stream in order,
writes a batch of entries to PostgreSQL in one statement, so one transaction
and one round trip (server/migrations/002_journal.sql), and only then
publishes their frames (acks included). So a client never sees a change that
PostgreSQL does not hold, and a Redis that loses its data can be rebuilt from
PostgreSQL without contradicting anything a client was told.

Each write is idempotent and only moves a row forward (an ended offer, request
or session is never reopened), so replaying entries after a crash, or two
matchers briefly replaying the same entries, is harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from matcher.keys import Keys
from matcher.store import Store, entry_id
from server import metrics
from server.errors import AstroqError

log = logging.getLogger("astroq.journal")

# One statement per batch (server/migrations/002_journal.sql): the rows go as one
# JSON document, as text, so no client-side JSON codec touches them.
APPLY_SQL = "SELECT astroq_apply_journal($1::text::jsonb)"


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


# Frames reach the gateways in batches on one fan-out channel that every gateway
# reads (the events channel of a pseudo-account: account ids are UUIDs, so it
# never meets a real one): a turn's frames cost the matcher one PUBLISH and a
# gateway one message, not one each. A gateway passes each line to the sockets it
# holds for that account and skips the rest.
FANOUT_ACCOUNT = "fanout"
FANOUT_BATCH = 2_000  # lines per message: amortises the publish, never stalls a gateway long


@dataclass
class Batch:
    ids: list[str] = field(default_factory=list)
    rows: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    lines: list[bytes] = field(default_factory=list)
    hints: list[list[Any]] = field(default_factory=list)


def frame_message(socket_id: str, op: str, frame: Any) -> bytes:
    """A message on an account's own channel: which socket (empty = all of the
    account), the op it answers, the frame."""
    return f"{socket_id}\n{op}\n".encode() + orjson.dumps(frame)


def fanout_line(account_id: str, frame: Any, socket_id: str = "", op: str = "") -> bytes:
    """One line of a fan-out batch: "<account> <socket or empty> <op or empty> <frame
    JSON>" (ids hold no space, and orjson never writes a raw newline)."""
    return f"{account_id} {socket_id} {op} ".encode() + orjson.dumps(frame)


def publish_fanout(pipe: Pipeline, keys: Keys, lines: list[bytes]) -> None:
    """Queues the lines on the fan-out channel, FANOUT_BATCH to a message."""
    channel = keys.events(FANOUT_ACCOUNT)
    for start in range(0, len(lines), FANOUT_BATCH):
        pipe.publish(channel, b"\n".join(lines[start : start + FANOUT_BATCH]))


def _entry_data(entry: tuple[Any, dict[Any, Any]]) -> dict[str, Any]:
    fields = entry[1]
    data: dict[str, Any] = orjson.loads(fields[b"d"] if b"d" in fields else fields["d"])
    return data


def parse_entries(entries: Iterable[tuple[Any, dict[Any, Any]]], keys: Keys) -> Batch:
    batch = Batch()
    for entry in entries:
        batch.ids.append(entry_id(entry))
        data = _entry_data(entry)
        for op, row in _list(data.get("pg")):
            batch.rows[op].append(row)
        for uid, frame, socket_id, frame_op in _list(data.get("ev")):
            batch.lines.append(fanout_line(uid, frame, socket_id, frame_op))
        batch.hints.extend(_list(data.get("m")))
    return batch


async def write_rows(conn: asyncpg.Connection, rows: dict[str, list[Any]]) -> None:
    if rows:
        await conn.execute(APPLY_SQL, orjson.dumps(rows).decode())


class Journal:
    """Persists outbox entries in order and publishes their frames."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        keys: Keys,
        on_position: Callable[[str, int, float | None], None] | None = None,
        store: Store | None = None,
        on_gone: Callable[[str], None] | None = None,
        on_offered: Callable[[str], None] | None = None,
    ) -> None:
        self.on_gone = on_gone
        self.on_offered = on_offered
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.on_position = on_position
        self.store = store

    async def persist(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        batch = parse_entries(entries, self.keys)
        try:
            async with self.pool.acquire() as conn:
                await write_rows(conn, batch.rows)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
            # One bad entry must not block the line behind it: write them one by one.
            await self._persist_one_by_one(entries)
            return
        await self._publish(batch)

    async def _persist_one_by_one(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        for entry in entries:
            batch = parse_entries([entry], self.keys)
            try:
                async with self.pool.acquire() as conn:
                    await write_rows(conn, batch.rows)
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                log.error("dropping outbox entry %s that PostgreSQL refuses: %s", batch.ids, exc)
                await self._refuse(entry, batch)
                continue
            await self._publish(batch)

    async def _refuse(self, entry: tuple[Any, dict[Any, Any]], batch: Batch) -> None:
        """The record refused a change (its account was deleted meanwhile): the frame
        that asked for it is answered with an error, and a request that exists only
        in Redis is taken out of its line again."""
        data = _entry_data(entry)
        pipe = self.redis.pipeline(transaction=False)
        for uid, _frame, socket_id, op in _list(data.get("ev")):
            if op:
                error = {"type": "error", "ref": _frame.get("ref"), "code": "unavailable",
                         "message": "the change could not be recorded"}
                pipe.publish(self.keys.events(uid), frame_message(socket_id, op, error))
        pipe.xdel(self.keys.outbox, *batch.ids)
        await pipe.execute()
        if self.store is not None:
            for op_name, row in _list(data.get("pg")):
                if op_name == "req":
                    try:
                        await self.store.cancel(row["user"], row["id"], "", "", None)
                    except AstroqError:
                        pass  # already gone

    async def _publish(self, batch: Batch) -> None:
        pipe = self.redis.pipeline(transaction=False)
        publish_fanout(pipe, self.keys, batch.lines)
        if batch.ids:
            pipe.xdel(self.keys.outbox, *batch.ids)
        await pipe.execute()
        self._observe(batch.hints)

    def _observe(self, hints: list[list[Any]]) -> None:
        for name, label, value in hints:
            if name == "req":
                metrics.REQUESTS.labels(label).inc()
            elif name == "offer":
                metrics.OFFERS.labels(label).inc()
            elif name == "wait":
                metrics.REQUEST_WAIT.labels(label).observe(value / 1000)
            elif name == "resp":
                metrics.OFFER_RESPONSE.observe(value / 1000)
            elif name == "gone" and self.on_gone is not None:
                self.on_gone(label)
            elif name == "offered" and self.on_offered is not None:
                self.on_offered(label)
            elif name == "pos" and self.on_position is not None:
                position, eta = value
                self.on_position(label, int(position), eta)
