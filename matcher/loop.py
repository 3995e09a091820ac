"""The matcher: one active at a time (a lease in Redis), the rest on standby.

The active matcher's loop is thin and event-driven: it blocks on the outbox
stream (every state change appends to it) or until the next deadline, then
1. ends what is due (offers, graces, max waits: timers.lua) and, when anything
   changed, takes a fresh snapshot (snapshot.lua), on the read's round trip,
2. asks the pure flow algorithm for a decision and commits it atomically
   (flow.decide, commit.lua), reading the outbox past it on the same round trip,
3. persists what was committed, the decision with the changes it answered, and
   only then publishes their frames (journal.py),
4. sends changed positions and counts (positions.py), and stats to admins.
Every matcher script checks the fencing token, so a matcher that lost its lease
(paused, partitioned) can no longer write.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from matcher import flow
from matcher.aio import REDIS_DOWN, STORES_DOWN, cancel_and_wait, unless_cancelled
from matcher.journal import Journal
from matcher.keys import Keys
from matcher.positions import Positions, admin_message
from matcher.rebuild import rebuild
from matcher.stats import admin_stats
from matcher.store import Fenced, Store, Sweep, entry_id, is_quiet
from server import errors, metrics
from server.settings import Settings

log = logging.getLogger("astroq.matcher")

GENERAL_LOOKAHEAD = 64  # general requests read beyond the free slots, for exclusions
POSITIONS_EVERY_S = 0.1  # coalescing window for positions (SPEC: within 1 s)
STATS_EVERY_S = 1.0  # admin stats at most once a second (SPEC §4)
REAP_EVERY_S = 1.0
MAX_BLOCK_S = 0.25  # also bounds how late a Redis data loss is noticed
# The roster is read again all the same, a few rows a turn, so that every online
# astrologer is read at least once in this time: commit.lua re-checks every offer,
# so a row gone stale could cost only offers not made, and this bounds that. Read
# whole at once instead, 10,000 rows would hold up the turn they fall in (~100 ms).
ROSTER_SWEEP_S = 10.0
SWEEP_MOST_PER_TURN = 256  # a quiet spell does not bank a whole read for later


def now_ms() -> int:
    return int(time.time() * 1000)


def _astrologer(row: list[Any]) -> flow.Astrologer:
    return flow.Astrologer(
        id=row[0],
        weight=float(row[1]),
        capacity=int(row[2]),
        load=int(row[3]),
        is_top=bool(row[4]),
        flow_enabled=bool(row[5]),
        idle_since_ms=int(row[6]),
    )


@dataclass
class RosterSweep:
    """How much of the online set each snapshot reads again: in proportion to the
    time since the last one, so one pass over the set takes ROSTER_SWEEP_S."""

    cursor: str = "0"
    online: int = 0
    owed: float = 0.0
    at: float = field(default_factory=time.monotonic)
    asked: tuple[float, float] | None = None  # (clock, owed) of the last ask

    def ask(self) -> Sweep:
        now = time.monotonic()
        owed = min(SWEEP_MOST_PER_TURN, self.owed + self.online * (now - self.at) / ROSTER_SWEEP_S)
        self.asked = (now, owed)
        return self.cursor, int(owed)

    def swept(self, data: dict[str, Any]) -> None:
        """A snapshot was taken, with the last ask or none (a snapshot not taken
        read nothing, and the next ask owes what this one did and more)."""
        self.at, owed = self.asked or (time.monotonic(), 0.0)
        self.asked = None
        self.owed = owed - int(owed)
        self.cursor, self.online = str(data.get("sweep", "0")), int(data.get("online", 0))


def _snapshot(data: dict[str, Any], astrologers: tuple[flow.Astrologer, ...]) -> flow.FlowSnapshot:
    stretch = flow.Stretch()
    if data["stretch"]:
        raw = orjson.loads(data["stretch"])
        stretch = flow.Stretch(
            members=tuple((m[0], float(m[1])) for m in raw["members"]),
            counts=raw["counts"],
            total=raw["total"],
            vtime=float(raw.get("vtime", 0.0)),
            passes=raw.get("passes") or {},
        )
    general = tuple(
        flow.Waiting(w[0], int(w[1]), frozenset(w[2] if isinstance(w[2], list) else ()))
        for w in (data["general"] if isinstance(data["general"], list) else [])
    )
    direct = {
        aid: tuple(flow.Waiting(w[0], int(w[1])) for w in items)
        for aid, items in (data["direct"] if isinstance(data["direct"], dict) else {}).items()
    }
    top_flow = data["top_flow"] if data["top_flow"] in ("off", "on", "boost") else "on"
    return flow.FlowSnapshot(
        astrologers=astrologers,
        general=general,
        direct=direct,
        top_flow=flow.TopFlow(top_flow),
        boost=float(data["boost"]),
        stretch=stretch,
    )


def _stretch_json(stretch: flow.Stretch) -> bytes:
    return orjson.dumps(
        {
            "members": [list(m) for m in stretch.members],
            "counts": dict(stretch.counts),
            "total": stretch.total,
            "vtime": stretch.vtime,
            "passes": dict(stretch.passes),
        }
    )


class Matcher:
    def __init__(
        self, settings: Settings, redis: Redis, pool: asyncpg.Pool, matcher_id: str | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.keys = Keys(settings.redis_prefix)
        self.store = Store(redis, self.keys)
        self.id = matcher_id or uuid.uuid4().hex
        self.positions = Positions(self.store, redis, self.keys)
        self.journal = Journal(
            redis,
            pool,
            self.keys,
            on_position=self.positions.remember,
            store=self.store,
            on_gone=self.positions.gone,
            on_offered=self.positions.under_offer,
        )
        self.leader = asyncio.Event()
        self.token = ""
        # The free online astrologers, kept between turns: a turn's snapshot reads
        # only those that changed (snapshot.lua). Only free ones: decide() never
        # looks at one with no room, and one that gets room has changed. None:
        # read them all next.
        self.roster: dict[str, flow.Astrologer] | None = None
        self.roster_free = 0  # the roster's free slots, kept with it: no walk a turn
        self.sweep = RosterSweep()
        self._lease_ms = int(settings.matcher_lease_s * 1000)
        self._grace_ms = int(settings.reconnect_grace_s * 1000)

    # ---- lease ---------------------------------------------------------------
    async def run(self) -> None:
        """Forever: wait for the lease, lead while it is held, step down when lost."""
        try:
            while True:
                try:
                    state = await self.store.lease(self.id, self._lease_ms)
                except Exception as exc:  # a matcher must outlive any one failure
                    unless_cancelled()
                    log.warning("could not take the lease: %r", exc)
                    await asyncio.sleep(self._lease_ms / 3000)
                    continue
                if not state.held:
                    metrics.MATCHER_LEADER.set(0)
                    await asyncio.sleep(min(0.2, self._lease_ms / 6000))
                    continue
                self.token = state.token
                log.info("matcher %s leads with fencing token %s", self.id, self.token)
                await self._lead()
        finally:
            metrics.MATCHER_LEADER.set(0)
            self.leader.clear()

    async def release(self) -> None:
        try:
            await self.store.release(self.id)
        except Exception:  # a clean stop must not fail because Redis is gone
            pass

    async def _keep_lease(self) -> None:
        renew_s = self._lease_ms / 3000
        deadline = time.monotonic() + self._lease_ms / 1000
        while True:
            await asyncio.sleep(renew_s)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow
                # the cancellation that stops this task.
                async with asyncio.timeout(renew_s):
                    state = await self.store.lease(self.id, self._lease_ms)
            except REDIS_DOWN as exc:
                unless_cancelled()
                if time.monotonic() >= deadline:
                    log.warning("lease not renewed in time (%s); stepping down", exc)
                    return
                continue
            if not state.held or state.token != self.token:
                log.warning("lease lost; stepping down")
                return
            deadline = time.monotonic() + self._lease_ms / 1000

    async def _lead(self) -> None:
        self.leader.set()
        metrics.MATCHER_LEADER.set(1)
        keeper = asyncio.create_task(self._keep_lease())
        work = asyncio.create_task(self._work())
        try:
            done, _ = await asyncio.wait({keeper, work}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, Fenced):
                        log.error("matcher work failed: %r", exc, exc_info=exc)
        finally:
            await cancel_and_wait([keeper, work])
            self.leader.clear()
            metrics.MATCHER_LEADER.set(0)
            self.positions.forget_all()
            self.roster = None

    # ---- the active matcher's loop ---------------------------------------------------
    async def _work(self) -> None:
        last_id = "0-0"
        next_due_ms = 0
        positions_due = stats_due = reap_due = 0.0
        positions_dirty = stats_dirty = True
        must_decide = True  # a new leader decides at once: the last one may have died mid-pass
        backoff_s = 0.05
        while True:
            try:
                clock = time.monotonic()
                block_s = MAX_BLOCK_S
                if next_due_ms:
                    block_s = min(block_s, max(0.0, (next_due_ms - now_ms()) / 1000))
                if positions_dirty:
                    block_s = min(block_s, max(0.0, positions_due - clock))
                if stats_dirty:
                    block_s = min(block_s, max(0.0, stats_due - clock))
                # A change may have brought a deadline (a grace, an offer): the timers
                # run before every decision, on the read's round trip, and the snapshot
                # is taken only when something changed (or a decision is owed).
                turn = await self.store.turn(
                    last_id,
                    None if must_decide else max(1, int(block_s * 1000)),
                    self.token,
                    self.settings.max_missed,
                    500,
                    GENERAL_LOOKAHEAD,
                    always_snapshot=must_decide,
                    **self._roster_read(),
                )
                if not turn.alive:
                    self.roster = None
                    await self._rebuild()
                    last_id = "0-0"
                    positions_dirty = stats_dirty = must_decide = True
                    continue
                entries, data = turn.entries, turn.snapshot
                # Entries without a snapshot: quiet ones (no decision owed), or another
                # process trimmed the outbox between the two reads: then decide on the
                # next turn all the same.
                must_decide = data is None and not all(map(is_quiet, entries))
                # Redis' clock sets the deadlines; only the distance is used here,
                # so a skewed local clock cannot make timers fire early or late.
                due_in_ms, more = turn.timers
                if more:
                    due_in_ms = 0
                elif due_in_ms < 0:
                    due_in_ms = int(MAX_BLOCK_S * 1000)
                next_due_ms = now_ms() + due_in_ms
                if data is not None:
                    # What the timers and the decision just committed joins this batch:
                    # one PostgreSQL commit carries a request and the offer it got, so
                    # the offer does not wait for a second fsync. Frames still go out
                    # only after that commit, in outbox order.
                    made, committed, settled = await self._decide(
                        data, entries[-1][0] if entries else last_id
                    )
                    if committed:
                        # Read past the decision, so the next read will not show
                        # these. When one of them is a change that came after the
                        # snapshot (a gateway's: an astrologer online, a cancel), or
                        # the decision could not see or make all it might, decide
                        # again at once rather than sleep until the next change.
                        # Otherwise the decision stands: a second one on the state
                        # it made would find nothing, and cost a snapshot.
                        entries += committed
                        must_decide = not settled
                    if made:
                        # The offers just made brought deadlines the timers have not seen.
                        offers_due_ms = now_ms() + int(self.settings.offer_timeout_s * 1000)
                        next_due_ms = min(next_due_ms, offers_due_ms) if next_due_ms else offers_due_ms
                if entries:
                    await self.journal.persist(entries)
                    last_id = entries[-1][0]
                    # Every change is an entry, a quiet one too (an accept still
                    # moves the admin's stats: waiting, assigned today).
                    positions_dirty = stats_dirty = True
                clock = time.monotonic()
                lines = None
                if positions_dirty and clock >= positions_due:
                    positions_dirty = False
                    positions_due = clock + POSITIONS_EVERY_S
                    published = await self.positions.publish()
                    lines = published["data"]
                    positions_dirty = published["deferred"] > 0
                if stats_dirty and clock >= stats_due:
                    stats_dirty = False
                    stats_due = clock + STATS_EVERY_S
                    await self._publish_stats(lines)
                if clock >= reap_due:
                    reap_due = clock + REAP_EVERY_S
                    if await self.store.reap(self.token, self._grace_ms):
                        stats_dirty = True
                        next_due_ms = 0  # graces started: their deadlines are new
                backoff_s = 0.05
            except Fenced:
                log.warning("fenced: another matcher holds the lease")
                return
            except errors.Unavailable:
                unless_cancelled()
                self.roster = None
                continue  # live state vanished between two steps; rebuild on the next turn
            except (*STORES_DOWN, asyncpg.PostgresError) as exc:
                # Redis or PostgreSQL is away: nothing is lost (the outbox keeps
                # what is not yet persisted); retry until they answer again. A reply
                # lost on the way may have held roster changes: read it whole.
                unless_cancelled()
                self.roster = None
                log.warning("matcher waiting for its stores: %r", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(1.0, backoff_s * 2)

    def _roster_read(self) -> dict[str, Any]:
        """What the next snapshot reads of the astrologers: all of them, or (with
        the roster held) those changed since and the sweep's next few."""
        return {"roster_free": None if self.roster is None else self.roster_free, "sweep": self.sweep.ask()}

    def _update_roster(self, data: dict[str, Any]) -> dict[str, flow.Astrologer]:
        """Folds the snapshot's rows (all of them, or the changed and swept ones)
        into the roster."""
        self.sweep.swept(data)
        rows = data["astrologers"] if isinstance(data["astrologers"], list) else []
        if data.get("changed_only") and self.roster is not None:
            roster, free = self.roster, self.roster_free
        else:
            roster, free = {}, 0
        for row in rows:
            held = roster.get(row[0])
            if held is not None:
                free -= held.capacity - held.load
            if row[7] and int(row[3]) < int(row[2]):
                astrologer = roster[row[0]] = _astrologer(row)
                free += astrologer.capacity - astrologer.load
            elif held is not None:
                del roster[row[0]]  # busy, or no longer online
        self.roster, self.roster_free = roster, free
        return roster

    async def _rebuild(self) -> None:
        await rebuild(
            self.redis,
            self.pool,
            self.keys,
            self.token,
            grace_ms=self._grace_ms,
            max_wait_ms=int(self.settings.max_wait_s * 1000),
        )
        self.positions.forget_all()

    async def decide(self) -> int:
        """One decision, committed, as a turn takes it: on the roster kept from the
        last snapshot and the rows changed since. Returns offers made."""
        data = await self.store.snapshot(self.token, GENERAL_LOOKAHEAD, **self._roster_read())
        made, _, _ = await self._decide(data, None)
        return made

    async def _decide(self, data: dict[str, Any], read_after: str | None) -> tuple[int, list[Any], bool]:
        """The decision on a snapshot, folded into the roster, committed; with
        read_after, also the outbox entries after it (the commit's among them) on
        the commit's round trip.
        Returns (offers made, those entries, settled): settled when every offer
        decided was made, the snapshot held the whole general line, and no entry
        but the commit's own and quiet ones came after the snapshot; a decision on
        the state that left would then make no offer."""
        started = time.perf_counter()
        decision = flow.decide(_snapshot(data, tuple(self._update_roster(data).values())))
        stretch = _stretch_json(decision.stretch)
        made, own_id = 0, ""
        entries: list[Any] = []
        if decision.offers or data["stretch"] != stretch.decode():
            offers = [
                (str(uuid.uuid4()), o.request_id, o.astrologer_id, o.direct) for o in decision.offers
            ]
            made, entries, own_id = await self.store.commit_and_outbox(
                self.token, int(self.settings.offer_timeout_s * 1000), stretch, offers, read_after
            )
        elif read_after is not None:
            entries = await self.store.outbox(read_after)
        metrics.DECISION_TIME.observe(time.perf_counter() - started)
        free_slots = self.roster_free
        general_limit = data.get("general_limit", free_slots + GENERAL_LOOKAHEAD)
        settled = (
            made == len(decision.offers)
            # The snapshot reads the general line up to the free slots plus a lookahead:
            # unless it read the whole line or every slot was filled, more may wait.
            and (len(data["general"]) < general_limit or made >= free_slots)
            and all(entry_id(entry) == own_id or is_quiet(entry) for entry in entries)
        )
        return made, entries, settled

    async def _publish_stats(self, lines: dict[str, Any] | None) -> None:
        stats = await admin_stats(self.store, self.pool, lines)
        await self.redis.publish(self.keys.admin_events, admin_message(stats))
