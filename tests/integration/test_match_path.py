"""The match path end to end (SPEC §4, §5): request, offer, accept, assigned, end."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from matcher.keys import Keys
from server import metrics
from tests.harness import Service


async def test_whole_journey(service: Service) -> None:
    astro = await service.astrologer("Vega")
    user = await service.user("Sam")
    console = await service.online(astro)
    page = await service.connect(user)

    ack = await page.call({"type": "request", "kind": "chat", "astrologer_id": None})
    assert ack["type"] == "ack" and ack["request_id"]
    request_id = ack["request_id"]
    queued = await page.wait_for("queued")
    assert queued["request_id"] == request_id and queued["position"] == 1

    offer = await console.wait_for("offer")
    assert offer["request_id"] == request_id
    assert offer["kind"] == "chat" and offer["direct"] is False
    assert offer["user"] == {"id": user.id, "name": "Sam"}
    assert 0 < offer["expires_in"] <= service.settings.offer_timeout_s

    accepted = await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    session_id = accepted["session_id"]
    at_console = await console.wait_for("assigned")
    assert at_console == {
        "type": "assigned",
        "request_id": request_id,
        "session_id": session_id,
        "user": {"id": user.id, "name": "Sam"},
    }
    at_page = await page.wait_for("assigned")
    assert at_page["astrologer"] == {"id": astro.id, "name": "Vega"}
    assert at_page["session_id"] == session_id

    await page.ok({"type": "end", "session_id": session_id})
    for client in (page, console):
        ended = await client.wait_for("session_ended")
        assert ended == {"type": "session_ended", "session_id": session_id, "ended_by": "user"}

    rows = await service.fetch("SELECT state, reason FROM requests WHERE id = $1", request_id)
    assert [tuple(r) for r in rows] == [("assigned", None)]
    rows = await service.fetch("SELECT outcome FROM offers WHERE request_id = $1", request_id)
    assert [r["outcome"] for r in rows] == ["accepted"]
    rows = await service.fetch("SELECT ended_by, ended_at IS NOT NULL AS ended FROM sessions")
    assert [tuple(r) for r in rows] == [("user", True)]


async def test_ack_precedes_what_it_causes(service: Service) -> None:
    user = await service.user()
    page = await service.connect(user)
    await page.send({"type": "request", "kind": "call", "astrologer_id": None, "ref": "x"})
    first = await page.next()
    second = await page.next()
    assert first["type"] == "ack" and first["ref"] == "x"
    assert second["type"] == "queued" and second["eta_seconds"] is None  # nobody online


async def test_request_is_in_postgres_before_its_ack(service: Service) -> None:
    user = await service.user()
    page = await service.connect(user)
    ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    rows = await service.fetch("SELECT state FROM requests WHERE id = $1", ack["request_id"])
    assert [r["state"] for r in rows] == ["open"]


async def test_positions_move_when_someone_ahead_cancels(service: Service) -> None:
    users = [await service.user(f"u{i}") for i in range(3)]
    pages = [await service.connect(u) for u in users]
    ids = []
    for page in pages:
        ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
        ids.append(ack["request_id"])
    assert [(await p.wait_for("queued"))["position"] for p in pages] == [1, 2, 3]
    await pages[0].ok({"type": "cancel", "request_id": ids[0]})
    cancelled = await pages[0].wait_for("cancelled")
    assert cancelled["reason"] == "user"
    assert (await pages[1].wait_for("position"))["position"] == 1
    assert (await pages[2].wait_for("position"))["position"] == 2


async def test_astrologer_online_wakes_the_matcher(service: Service) -> None:
    user = await service.user()
    page = await service.connect(user)
    await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    await asyncio.sleep(0.3)
    astro = await service.astrologer()
    console = await service.online(astro)
    offer = await console.wait_for("offer", timeout=2)
    assert offer["user"]["id"] == user.id


async def _hold_journal(service: Service, table: str) -> asyncpg.Connection:
    """Opens a transaction that locks `table`, so the journal's next batch waits on it."""
    blocker = await service.pool.acquire()
    await blocker.execute(f"BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE")
    return blocker


async def _journal_waits(service: Service) -> None:
    async with service.pool.acquire() as watcher:
        while not await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%astroq_apply_journal%'"
        ):
            await asyncio.sleep(0.01)


async def _release(service: Service, blocker: asyncpg.Connection) -> None:
    await blocker.execute("ROLLBACK")
    await service.pool.release(blocker)


async def test_a_clients_next_frame_is_applied_before_the_last_ones_ack(service: Service) -> None:
    """SPEC §5 applies a client's frames in order, one at a time; the next one need
    not wait for PostgreSQL to hold the last. An astrologer accepting two offers has
    both applied while the journal waits, and the acks still come in order."""
    keys = Keys(service.settings.redis_prefix)
    console = await service.online(await service.astrologer(capacity=2))
    users = [await service.user("first"), await service.user("second")]
    for user in users:
        await (await service.connect(user)).ok({"type": "request", "kind": "chat", "astrologer_id": None})
    offers = [await console.wait_for("offer"), await console.wait_for("offer")]
    blocker = await _hold_journal(service, "sessions")  # the first accept's batch waits
    try:
        await console.send({"type": "accept", "offer_id": offers[0]["offer_id"], "ref": "a1"})
        await _journal_waits(service)
        await console.send({"type": "accept", "offer_id": offers[1]["offer_id"], "ref": "a2"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not await service.redis.hget(keys.user(users[1].id), "sess"):  # its session began
            assert loop.time() < deadline, "the second accept waited for the first one's ack"
            await asyncio.sleep(0.01)
        assert [f for f in await console.quiet(0.1) if f["type"] in ("ack", "assigned")] == []
    finally:
        await _release(service, blocker)
    acks = [await console.wait_for("ack"), await console.wait_for("ack")]
    assert [ack["ref"] for ack in acks] == ["a1", "a2"]


async def test_an_error_waits_for_the_acks_of_the_frames_before_it(service: Service) -> None:
    """The request is applied, its ack waits for the journal; the cancel behind it
    fails at once in Redis, yet its error comes after the request's ack."""
    page = await service.connect(await service.user())
    blocker = await _hold_journal(service, "requests")
    try:
        await page.send({"type": "request", "kind": "chat", "astrologer_id": None, "ref": "req"})
        await _journal_waits(service)
        await page.send({"type": "cancel", "request_id": str(uuid.uuid4()), "ref": "bad"})
        assert await page.quiet(0.3) == []
    finally:
        await _release(service, blocker)
    answers = [await page.wait_for("ack"), await page.wait_for("error")]
    assert [(f["ref"], f.get("code")) for f in answers] == [("req", None), ("bad", "not_found")]
    assert page.frames.index(answers[0]) < page.frames.index(answers[1])


def _decisions() -> float:
    return metrics.REGISTRY.get_sample_value("astroq_matcher_decision_seconds_count") or 0.0


async def test_a_decision_is_taken_only_when_it_could_find_something(service: Service) -> None:
    """After its commit the matcher decides again only when something else changed
    since its snapshot: a decision on the state it made itself would find nothing,
    and cost a snapshot. Nor does an accept lead to one."""
    console = await service.online(await service.astrologer(capacity=2))
    page = await service.connect(await service.user())
    await asyncio.sleep(0.5)  # the matcher has seen the astrologer come online
    before = _decisions()
    await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    offer = await console.wait_for("offer")
    await asyncio.sleep(0.5)
    assert _decisions() - before == 1, _decisions() - before
    # An accept changes nothing a decision reads (the offer's slot becomes the
    # session's): its entry is quiet, and the matcher takes no snapshot for it.
    await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    await page.wait_for("assigned")
    await asyncio.sleep(0.3)
    assert _decisions() - before == 1, _decisions() - before
    # A second request still gets the astrologer's second slot at once.
    await (await service.connect(await service.user())).ok({"type": "request", "kind": "chat", "astrologer_id": None})
    await console.wait_for("offer")


async def test_a_drainer_that_ends_leaves_a_newer_one_in_place(service: Service) -> None:
    """SPEC §5, one frame at a time per client: once a drainer's next.lua has freed
    the client's queue, the client's next frame may take it and register its own
    drainer before the first one has finished. Had the first one unregistered the
    newer one, a frame behind it would find no drainer and adopt the queue, and two
    drainers would apply the client's frames at once."""
    server = service._servers[0][0]
    gateway = server.config.app.state.services.gateway
    user = await service.user()
    await service.connect(user)
    newer = asyncio.get_running_loop().create_future()  # the drainer registered since
    gateway.drainers[user.id] = newer
    try:
        await gateway._drain(user.id, None)  # the queue is empty: it frees it and ends
        assert gateway.drainers.get(user.id) is newer
    finally:
        gateway.drainers.pop(user.id, None)
        newer.cancel()
