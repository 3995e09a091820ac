"""Typed access to the live state in Redis: one method per Lua script.

Scripts are called by their SHA1 and loaded again when Redis has forgotten
them (a `SCRIPT FLUSH`, a restart). A script that refuses returns
{'err', code}; the wrapper turns that into the typed error of server/errors.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from server import errors
from matcher.keys import Keys

_MATCH_SLOT_SCRIPTS = (
    "request",
    "cancel",
    "answer",
    "end",
    "status",
    "connect",
    "disconnect",
    "heartbeat",
    "snapshot",
    "commit",
    "timers",
    "reap",
    "lines",
    "lease",
    "release",
    "upsert_astrologer",
)
_CLIENT_SLOT_SCRIPTS = ("enqueue", "next")
OUTBOX_BATCH = 1000  # entries the matcher reads at once


def _source(name: str) -> str:
    return resources.files("matcher").joinpath(f"lua/{name}.lua").read_text()


class Script:
    """A Lua script called by its SHA1 and loaded again when Redis has forgotten it
    (`SCRIPT FLUSH`, a restart). redis-py's AsyncScript does the same, but checks
    its client against two pipeline classes on every call (`typing.Protocol`
    isinstance checks, 4% of a busy gateway). `client` needs only `evalsha` and
    `script_load`: a Redis client, or the gateway's ScriptBatcher."""

    def __init__(self, client: Any, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(self.source)
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)


class Fenced(Exception):
    """This matcher's fencing token is stale: another matcher holds the lease."""


@dataclass(frozen=True)
class Turn:
    alive: bool
    entries: list[Any]
    timers: tuple[int, bool]  # ms until the next due time or -1, more already due
    snapshot: dict[str, Any] | None


@dataclass(frozen=True)
class LeaseState:
    held: bool
    token: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check(reply: Any) -> list[Any]:
    if isinstance(reply, list) and reply and _text(reply[0]) == "err":
        code = _text(reply[1])
        if code == "fenced":
            raise Fenced()
        raise errors.from_code(code)
    return list(reply)


# A sweep over the online astrologers: (the cursor to go on from, how many to read).
Sweep = tuple[str, int]


def _roster_args(roster_free: int | None, sweep: Sweep) -> list[Any]:
    """snapshot.lua's ARGV[4..7]: the roster held, its free slots, the sweep."""
    return ["0" if roster_free is None else "1", roster_free or 0, *sweep]


def _snapshot_reply(reply: Any) -> dict[str, Any]:
    return orjson.loads(_check(reply)[1])


def _timers_reply(reply: Any) -> tuple[int, bool]:
    checked = _check(reply)
    return int(_text(checked[1])), bool(int(checked[2]))


def _commit_args(
    token: str, offer_timeout_ms: int, stretch: bytes, offers: Sequence[tuple[str, str, str, bool]]
) -> list[Any]:
    args: list[Any] = [token, offer_timeout_ms, stretch]
    for offer_id, request_id, astrologer_id, direct in offers:
        args += [offer_id, request_id, astrologer_id, "1" if direct else "0"]
    return args


def entry_id(entry: Any) -> str:
    """An outbox entry's id, as text."""
    return _text(entry[0])


def is_quiet(entry: Any) -> bool:
    """An outbox entry no snapshot sees (lib.lua flush): it owes no decision."""
    return b"q" in entry[1] or "q" in entry[1]


def _entries(reply: Any) -> list[Any]:
    return list(reply[0][1]) if reply else []  # [[stream, [(id, fields), ...]]]


class Store:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        lib = _source("lib")
        self._scripts = {
            name: Script(redis, lib + "\n" + _source(name)) for name in _MATCH_SLOT_SCRIPTS
        }
        self._scripts.update({name: Script(redis, _source(name)) for name in _CLIENT_SLOT_SCRIPTS})

    async def _match(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](keys=[self.keys.match], args=list(args))

    # ---- client frames (gateway) -------------------------------------------
    async def request(
        self,
        user_id: str,
        user_name: str,
        request_id: str,
        kind: str,
        astrologer_id: str | None,
        socket_id: str,
        op: str,
        ref: str | None,
        max_wait_ms: int,
    ) -> None:
        _check(
            await self._match(
                "request",
                user_id,
                user_name,
                request_id,
                kind,
                astrologer_id or "",
                socket_id,
                op,
                orjson.dumps(ref),
                max_wait_ms,
            )
        )

    async def cancel(
        self, user_id: str, request_id: str, socket_id: str, op: str, ref: str | None
    ) -> None:
        _check(await self._match("cancel", user_id, request_id, socket_id, op, orjson.dumps(ref)))

    async def answer(
        self,
        astrologer_id: str,
        offer_id: str,
        verb: str,
        session_id: str,
        socket_id: str,
        op: str,
        ref: str | None,
    ) -> None:
        _check(
            await self._match(
                "answer",
                astrologer_id,
                offer_id,
                verb,
                session_id,
                socket_id,
                op,
                orjson.dumps(ref),
            )
        )

    async def end(
        self,
        account_id: str,
        role: str,
        session_id: str,
        socket_id: str,
        op: str,
        ref: str | None,
    ) -> None:
        _check(
            await self._match("end", account_id, role, session_id, socket_id, op, orjson.dumps(ref))
        )

    async def set_status(
        self, astrologer_id: str, status: str, socket_id: str, op: str, ref: str | None
    ) -> None:
        _check(
            await self._match("status", astrologer_id, status, socket_id, op, orjson.dumps(ref))
        )

    # ---- presence (gateway) -------------------------------------------------
    async def connect(
        self, account_id: str, role: str, socket_id: str, gateway_id: str
    ) -> tuple[dict[str, Any], bool]:
        reply = _check(await self._match("connect", account_id, role, socket_id, gateway_id))
        return orjson.loads(reply[1]), bool(int(reply[2]))

    async def disconnect(
        self, account_id: str, socket_id: str, gateway_id: str, grace_ms: int
    ) -> int:
        return int(await self._match("disconnect", account_id, socket_id, gateway_id, grace_ms))

    async def heartbeat(self, gateway_id: str, ttl_ms: int) -> tuple[bool, int]:
        alive, sockets = await self._match("heartbeat", gateway_id, ttl_ms)
        return bool(int(alive)), int(sockets)

    # ---- per-client queues (gateway) -----------------------------------------
    async def enqueue(self, user_id: str, frame: bytes, gateway_id: str, lock_ms: int) -> bytes | None:
        keys = [self.keys.client_queue(user_id), self.keys.client_lock(user_id)]
        result: bytes | None = await self._scripts["enqueue"](
            keys=keys, args=[frame, gateway_id, lock_ms]
        )
        return result

    async def next_frame(self, user_id: str, gateway_id: str, lock_ms: int) -> bytes | None:
        keys = [self.keys.client_queue(user_id), self.keys.client_lock(user_id)]
        result: bytes | None = await self._scripts["next"](keys=keys, args=[gateway_id, lock_ms])
        return result

    # ---- admin -------------------------------------------------------------------
    async def upsert_astrologer(
        self,
        astrologer_id: str,
        name: str,
        weight: float,
        capacity: int,
        is_top: bool,
        flow_enabled: bool,
    ) -> None:
        await self._match(
            "upsert_astrologer",
            astrologer_id,
            name,
            repr(float(weight)),
            capacity,
            int(is_top),
            int(flow_enabled),
        )

    async def set_flow(self, top_flow: str, boost: float) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.flow, mapping={"top_flow": top_flow, "boost": repr(boost)})
        pipe.incr(self.keys.config)  # a rebuild that read the flow before this reads it again
        pipe.xadd(self.keys.outbox, {"d": b'{"m":[["nudge","",0]]}'})  # wakes the matcher
        await pipe.execute()

    # ---- matcher -------------------------------------------------------------------
    async def lease(self, matcher_id: str, ttl_ms: int) -> LeaseState:
        held, token = await self._match("lease", matcher_id, ttl_ms)
        return LeaseState(bool(int(held)), _text(token))

    async def release(self, matcher_id: str) -> bool:
        return bool(int(await self._match("release", matcher_id)))

    async def snapshot(
        self, token: str, extra_general: int, roster_free: int | None = None, sweep: Sweep = ("0", 0)
    ) -> dict[str, Any]:
        """snapshot.lua; with `roster_free`, only the astrologers changed since the
        last such read and `sweep`'s (see turn())."""
        return _snapshot_reply(
            await self._match("snapshot", token, extra_general, "", *_roster_args(roster_free, sweep))
        )

    async def commit(
        self,
        token: str,
        offer_timeout_ms: int,
        stretch: bytes,
        offers: Sequence[tuple[str, str, str, bool]],
    ) -> int:
        args = _commit_args(token, offer_timeout_ms, stretch, offers)
        return int(_check(await self._match("commit", *args))[1])

    async def timers(self, token: str, max_missed: int, limit: int) -> tuple[int, bool]:
        """Ends what is due; returns (ms until the next due time or -1, more already due)."""
        return _timers_reply(await self._match("timers", token, max_missed, limit))

    # The matcher's turn in fewer round trips: on a busy machine every one is a
    # wake-up of Redis and of the matcher, each waiting for a core.
    async def outbox(self, after: str) -> list[Any]:
        return _entries(await self.redis.xread({self.keys.outbox: after}, count=OUTBOX_BATCH))

    async def turn(
        self,
        after: str,
        block_ms: int | None,
        token: str,
        max_missed: int,
        limit: int,
        extra_general: int,
        always_snapshot: bool,
        roster_free: int | None = None,
        sweep: Sweep = ("0", 0),
    ) -> Turn:
        """The matcher's turn, read in one round trip: the outbox entries after `after`
        (waiting up to block_ms for one; None: not at all), whether live state is
        there once the wait is over, then timers() and a snapshot() of what they
        left. The snapshot is None when nothing was appended after `after`, unless
        `always_snapshot`. Redis runs the commands behind a blocked XREAD as soon as
        it returns, so the matcher wakes with its snapshot in hand. Live state is
        asked after the wait: asked before, the answer could be 250 ms old when it
        says "lost", by when a standby may have rebuilt and be matching, and a
        second rebuild would wipe its offers out of Redis while they still went to
        PostgreSQL. With `roster_free` (the free slots of the roster the caller
        holds) the snapshot holds only the astrologers changed since the last such
        read, and those `sweep` (cursor, count) reads again (snapshot.lua)."""
        snapshot_args = [token, extra_general, "" if always_snapshot else after, *_roster_args(roster_free, sweep)]
        read, alive, timers, snapshot = await self._pipelined(
            [("timers", [token, max_missed, limit]), ("snapshot", snapshot_args)],
            read_before=(after, block_ms),
        )
        if not alive:
            return Turn(False, _entries(read), (-1, False), None)
        data = _check(snapshot)[1]
        return Turn(True, _entries(read), _timers_reply(timers), orjson.loads(data) if data else None)

    async def commit_and_outbox(
        self,
        token: str,
        offer_timeout_ms: int,
        stretch: bytes,
        offers: Sequence[tuple[str, str, str, bool]],
        after: str | None,
    ) -> tuple[int, list[Any], str]:
        """commit(), then (unless `after` is None) the outbox entries after `after`,
        the commit's among them: (offers made, those entries, the commit's entry id
        or '' when it appended none)."""
        replies = await self._pipelined(
            [("commit", _commit_args(token, offer_timeout_ms, stretch, offers))], read_after=after
        )
        committed = _check(replies[0])
        own_id = _text(committed[2])
        return int(committed[1]), (_entries(replies[1]) if after is not None else []), own_id

    async def _pipelined(
        self,
        calls: list[tuple[str, list[Any]]],
        read_after: str | None = None,
        read_before: tuple[str, int | None] | None = None,
    ) -> list[Any]:
        """Match-slot scripts in one round trip, in order, then (with read_after) the
        outbox entries after it; with read_before (an entry id, a wait in ms), the
        outbox entries after it and whether live state is there come first. If Redis
        has forgotten a script, the lot goes again once it is loaded: a script refused
        that way did not run, and the ones before it may run twice, so only idempotent
        scripts (timers) may come before another."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            if read_before is not None:
                after, block_ms = read_before
                pipe.xread({self.keys.outbox: after}, count=OUTBOX_BATCH, block=block_ms)
                pipe.exists(self.keys.alive)
            for name, args in calls:
                pipe.evalsha(self._scripts[name].sha, 1, self.keys.match, *args)
            if read_after is not None:
                pipe.xread({self.keys.outbox: read_after}, count=OUTBOX_BATCH)
            replies = await pipe.execute(raise_on_error=False)
            scripts = replies[2:] if read_before is not None else replies
            missing = [name for (name, _), r in zip(calls, scripts) if isinstance(r, NoScriptError)]
            if not missing or attempt:
                break
            for name in missing:
                await self.redis.script_load(self._scripts[name].source)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies)

    async def reap(self, token: str, grace_ms: int) -> int:
        return int(_check(await self._match("reap", token, grace_ms))[1])

    async def lines(self) -> dict[str, Any]:
        return orjson.loads(await self._match("lines"))
