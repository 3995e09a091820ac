"""SPEC §6, checked on the record in PostgreSQL.

Shared by the storm test (tests/integration/test_invariants.py) and the chaos
runner (bench/chaos.py). The checks count violations instead of asserting, so
a chaos run can report every one of them; a test asserts the counts are zero.

`read_record` takes one consistent snapshot (a REPEATABLE READ transaction when
given a connection). `check(record, final=...)`:

- mid-run (final=False) an open request, offer or session is fine; what was
  recorded must still never contradict §6;
- final=True (after a wind-down) every request is in exactly one terminal
  state and every offer has an outcome.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Sequence

import asyncpg

Row = Mapping[str, Any]
Fetch = Callable[[str], Awaitable[Sequence[Row]]]

NEVER = datetime.max.replace(tzinfo=timezone.utc)  # the end of what has not ended

REQUESTS_SQL = "SELECT id, user_id, state, reason, astrologer_id, seq, created_at, ended_at FROM requests"
OFFERS_SQL = (
    "SELECT id, request_id, astrologer_id, direct, created_at, outcome, answered_at FROM offers"
)
SESSIONS_SQL = "SELECT id, request_id, user_id, astrologer_id, started_at, ended_at FROM sessions"
CAPACITIES_SQL = "SELECT id, capacity FROM astrologers"

TERMINAL = ("assigned", "cancelled")
REASONS = ("user", "timeout", "declined", "abandoned", "astrologer_offline")


@dataclass(frozen=True)
class Record:
    requests: Sequence[Row]
    offers: Sequence[Row]
    sessions: Sequence[Row]
    capacities: dict[str, int]


async def read_record(source: Fetch | asyncpg.Connection) -> Record:
    """The whole record; from a connection, as one REPEATABLE READ snapshot."""
    if isinstance(source, asyncpg.Connection):
        conn = source
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _read(conn.fetch)
    return await _read(source)


async def _read(fetch: Fetch) -> Record:
    requests = await fetch(REQUESTS_SQL)
    offers = await fetch(OFFERS_SQL)
    sessions = await fetch(SESSIONS_SQL)
    capacities = {str(r["id"]): int(r["capacity"]) for r in await fetch(CAPACITIES_SQL)}
    return Record(list(requests), list(offers), list(sessions), capacities)


@dataclass
class Violations:
    """What contradicts SPEC §6; every list empty and dict empty when all holds."""

    not_terminal: list[str] = field(default_factory=list)  # final: requests still open
    bad_terminal: list[str] = field(default_factory=list)  # ended without time, or reason wrong
    double_assigned: list[str] = field(default_factory=list)  # >1 session or accepted offer
    assignment_mismatch: list[str] = field(default_factory=list)  # assigned without a session, or the reverse
    capacity: dict[str, int] = field(default_factory=dict)  # astrologer -> worst excess
    passed_over: list[tuple[str, str]] = field(default_factory=list)  # (offer, older request skipped)
    open_offers: list[str] = field(default_factory=list)  # final: offers that never ended
    user_overlaps: list[str] = field(default_factory=list)  # a user with two open items at once
    reoffered: list[tuple[str, str]] = field(default_factory=list)  # (request, astrologer) after a decline/expiry

    @property
    def ok(self) -> bool:
        """Whether SPEC §6 holds (`reoffered` is §5 and reported apart)."""
        return not (
            self.not_terminal
            or self.bad_terminal
            or self.double_assigned
            or self.assignment_mismatch
            or self.capacity
            or self.passed_over
            or self.open_offers
            or self.user_overlaps
        )

    def counts(self) -> dict[str, int]:
        return {
            "not_terminal": len(self.not_terminal),
            "bad_terminal": len(self.bad_terminal),
            "double_assigned": len(self.double_assigned),
            "assignment_mismatch": len(self.assignment_mismatch),
            "capacity_violations": sum(self.capacity.values()),
            "passed_over": len(self.passed_over),
            "open_offers": len(self.open_offers),
            "user_overlaps": len(self.user_overlaps),
            "reoffered": len(self.reoffered),
        }


def capacity_violations(intervals: list[tuple[datetime, datetime | None]], capacity: int) -> int:
    """How far the most items held at once went over `capacity` (0 when never)."""
    events: list[tuple[datetime, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        if end is not None:
            events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # at one instant, ends before starts
    load = worst = 0
    for _, delta in events:
        load += delta
        worst = max(worst, load)
    return max(0, worst - capacity)


def check(record: Record, *, final: bool) -> Violations:
    found = Violations()
    requests = record.requests
    offers = record.offers
    sessions = record.sessions

    # Every request in exactly one state; a terminal one with its time and outcome.
    for r in requests:
        if r["state"] == "open":
            if final:
                found.not_terminal.append(str(r["id"]))
            continue
        if r["state"] not in TERMINAL or r["ended_at"] is None:
            found.bad_terminal.append(str(r["id"]))
        elif (r["reason"] is None) != (r["state"] == "assigned"):
            found.bad_terminal.append(str(r["id"]))
        elif r["reason"] is not None and r["reason"] not in REASONS:
            found.bad_terminal.append(str(r["id"]))

    # None assigned twice; an assigned request has exactly one session and one
    # accepted offer, any other none.
    sessions_of: dict[Any, int] = defaultdict(int)
    for s in sessions:
        sessions_of[s["request_id"]] += 1
    accepted_of: dict[Any, int] = defaultdict(int)
    for o in offers:
        if o["outcome"] is None:
            if final:
                found.open_offers.append(str(o["id"]))
        elif o["outcome"] == "accepted":
            accepted_of[o["request_id"]] += 1
    for r in requests:
        sessions_n, accepted_n = sessions_of[r["id"]], accepted_of[r["id"]]
        if sessions_n > 1 or accepted_n > 1:
            found.double_assigned.append(str(r["id"]))
        elif sessions_n != accepted_n or sessions_n != (1 if r["state"] == "assigned" else 0):
            found.assignment_mismatch.append(str(r["id"]))

    # No astrologer held more offers plus sessions than its capacity, at any moment.
    held: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for o in offers:
        held[str(o["astrologer_id"])].append((o["created_at"], o["answered_at"]))
    for s in sessions:
        held[str(s["astrologer_id"])].append((s["started_at"], s["ended_at"]))
    for astrologer_id, intervals in held.items():
        excess = capacity_violations(intervals, record.capacities.get(astrologer_id, 1))
        if excess:
            found.capacity[astrologer_id] = excess

    found.passed_over = _passed_over(requests, offers)
    found.user_overlaps = _user_overlaps(requests, sessions)
    found.reoffered = _reoffered(offers)
    return found


def _passed_over(requests: Sequence[Row], offers: Sequence[Row]) -> list[tuple[str, str]]:
    """Oldest first: offers made past an older request of the same line that was
    waiting (not under offer) and that this astrologer had not already had.

    A sweep over offers in time order keeps, per line, the requests open at that
    moment, so each offer is compared with its line's live requests only.
    """
    by_id = {r["id"]: r for r in requests}
    offers_of: dict[Any, list[Row]] = defaultdict(list)
    for o in offers:
        offers_of[o["request_id"]].append(o)
    by_created = sorted(requests, key=lambda r: r["created_at"])
    live: dict[Any, dict[Any, Row]] = defaultdict(dict)  # line -> request id -> request
    ending: list[tuple[datetime, str, Any, Any]] = []
    next_request = 0
    found = []
    for o in sorted(offers, key=lambda o: o["created_at"]):
        t = o["created_at"]
        while next_request < len(by_created) and by_created[next_request]["created_at"] < t:
            r = by_created[next_request]
            next_request += 1
            live[r["astrologer_id"]][r["id"]] = r
            heapq.heappush(ending, (r["ended_at"] or NEVER, str(r["id"]), r["astrologer_id"], r["id"]))
        while ending and ending[0][0] <= t:
            _, _, line_of_ended, rid = heapq.heappop(ending)
            live[line_of_ended].pop(rid, None)
        mine = by_id.get(o["request_id"])
        if mine is None:
            continue
        line = o["astrologer_id"] if o["direct"] else None
        for a in live[line].values():
            if a["seq"] >= mine["seq"]:
                continue
            under_offer = any(
                x["created_at"] <= t <= (x["answered_at"] or NEVER) for x in offers_of[a["id"]]
            )
            had_it = any(
                x["astrologer_id"] == o["astrologer_id"]
                and x["answered_at"] is not None
                and x["answered_at"] <= t
                and x["outcome"] in ("declined", "expired")
                for x in offers_of[a["id"]]
            )
            if not under_offer and not had_it:
                found.append((str(o["id"]), str(a["id"])))
    return found


def _user_overlaps(requests: Sequence[Row], sessions: Sequence[Row]) -> list[str]:
    """A user holds at most one open request or session: its items never overlap.

    An item runs from the request's creation to its end, or, once assigned, to
    the end of its session.
    """
    session_end = {s["request_id"]: s["ended_at"] or NEVER for s in sessions}
    items: dict[Any, list[tuple[datetime, datetime]]] = defaultdict(list)
    for r in requests:
        if r["state"] == "assigned":
            end = session_end.get(r["id"], r["ended_at"] or NEVER)
        else:
            end = r["ended_at"] or NEVER
        items[r["user_id"]].append((r["created_at"], end))
    found = []
    for user_id, spans in items.items():
        spans.sort()
        if any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])):
            found.append(str(user_id))
    return found


def _reoffered(offers: Sequence[Row]) -> list[tuple[str, str]]:
    """SPEC §5: a declined or expired request is not offered to that astrologer again."""
    by_pair: dict[tuple[Any, Any], list[Row]] = defaultdict(list)
    for o in offers:
        by_pair[(o["request_id"], o["astrologer_id"])].append(o)
    found = []
    for (request_id, astrologer_id), pair in by_pair.items():
        pair.sort(key=lambda o: o["created_at"])
        for earlier, later in zip(pair, pair[1:]):
            if earlier["outcome"] in ("declined", "expired"):
                found.append((str(request_id), str(astrologer_id)))
                break
    return found
