"""Redis losing its data, two gateways, matcher failover and fencing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from matcher.aio import cancel_and_wait
from matcher.keys import Keys
from matcher.loop import Matcher
from matcher.store import Fenced, Store
from tests.harness import Service


async def wipe(service: Service) -> int:
    """Deletes every key of this service: what a Redis restart without persistence does."""
    keys = [key async for key in service.redis.scan_iter(match=f"{service.settings.redis_prefix}:*")]
    if keys:
        await service.redis.delete(*keys)
    return len(keys)


async def test_redis_losing_everything_keeps_every_acknowledged_request_in_order(
    service: Service,
) -> None:
    astro = await service.astrologer("Orion")
    console = await service.connect(astro)
    await console.ok({"type": "status", "status": "break"})  # keeps its own line waiting
    users = await service.many_users(6)
    pages = [await service.connect(u) for u in users]
    request_ids = []
    for i, page in enumerate(pages):
        target = astro.id if i % 3 == 2 else None
        ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": target})
        request_ids.append(ack["request_id"])
    before = [(await p.wait_for("queued"))["position"] for p in pages]
    assert before == [1, 2, 1, 3, 4, 2]

    assert await wipe(service) > 0
    # The matcher notices within its lease and rebuilds from PostgreSQL.
    deadline = time.monotonic() + service.settings.matcher_lease_s + 2
    while not await service.redis.exists(Keys(service.settings.redis_prefix).alive):
        assert time.monotonic() < deadline, "live state was not rebuilt in time"
        await asyncio.sleep(0.05)

    # A reconnecting client resumes the same request at the same place.
    for user, request_id, position in zip(users, request_ids, before):
        again = await service.connect(user)
        request = again.frames[0]["state"]["request"]
        assert request["request_id"] == request_id and request["position"] == position
    # Still served oldest first: the astrologer comes back and takes its own line first.
    await console.ok({"type": "status", "status": "online"})
    offer = await console.wait_for("offer")
    assert offer["request_id"] == request_ids[2]
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    offer = await console.wait_for("offer")
    assert offer["request_id"] == request_ids[5]
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    offer = await console.wait_for("offer")
    assert offer["request_id"] == request_ids[0]


async def test_two_gateways_one_matcher(service: Service) -> None:
    second = await service.start_gateway()
    astro = await service.astrologer("Lyra")
    user = await service.user("Kim")
    console = await service.connect(astro, url=second.replace("http", "ws") + "/ws")
    await console.ok({"type": "status", "status": "online"})
    page = await service.connect(user)  # on the first gateway
    other_tab = await service.connect(user, url=second.replace("http", "ws") + "/ws")
    ack = await page.ok({"type": "request", "kind": "call", "astrologer_id": None})
    offer = await console.wait_for("offer")
    accepted = await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    for client in (page, other_tab):
        assigned = await client.wait_for("assigned")
        assert assigned["request_id"] == ack["request_id"]
        assert assigned["session_id"] == accepted["session_id"]
    # The ack went only to the socket that sent the frame.
    assert not any(f.get("type") == "ack" for f in other_tab.frames)


async def test_frames_of_one_account_on_two_gateways_apply_in_order(service: Service) -> None:
    second = await service.start_gateway()
    user = await service.user()
    a = await service.connect(user)
    b = await service.connect(user, url=second.replace("http", "ws") + "/ws")
    replies = await asyncio.gather(
        a.call({"type": "request", "kind": "chat", "astrologer_id": None}),
        b.call({"type": "request", "kind": "chat", "astrologer_id": None}),
    )
    # Applied one at a time: exactly one wins, the other is told why.
    assert sorted(r["type"] for r in replies) == ["ack", "error"]
    assert [r["code"] for r in replies if r["type"] == "error"] == ["already_open"]


async def test_standby_takes_over_when_the_active_matcher_dies(service_factory: Any) -> None:
    service: Service = await service_factory(with_matcher=False, matcher_lease_s=0.5)
    matchers = [Matcher(service.settings, service.redis, service.pool) for _ in range(2)]
    tasks = [asyncio.create_task(m.run()) for m in matchers]
    try:
        await asyncio.wait_for(
            asyncio.wait([asyncio.create_task(m.leader.wait()) for m in matchers],
                         return_when=asyncio.FIRST_COMPLETED),
            5,
        )
        leaders = [m for m in matchers if m.leader.is_set()]
        assert len(leaders) == 1
        index = matchers.index(leaders[0])
        tasks[index].cancel()  # dies without giving the lease back, like kill -9
        killed = time.monotonic()
        standby = matchers[1 - index]
        await asyncio.wait_for(standby.leader.wait(), service.settings.matcher_lease_s + 1)
        took_over_s = time.monotonic() - killed
        assert took_over_s <= service.settings.matcher_lease_s + 1

        # And it matches.
        astro = await service.astrologer()
        console = await service.online(astro)
        user = await service.user()
        page = await service.connect(user)
        await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
        await console.wait_for("offer")
    finally:
        await cancel_and_wait(tasks)
        assert all(task.done() for task in tasks), "a matcher did not stop when cancelled"



async def test_a_matcher_that_lost_its_lease_cannot_write(service_factory: Any) -> None:
    service: Service = await service_factory(with_matcher=False)
    keys = Keys(service.settings.redis_prefix)
    store = Store(service.redis, keys)
    await service.redis.set(keys.alive, "1")
    old = await store.lease("paused-matcher", 200)
    assert old.held
    await asyncio.sleep(0.3)  # paused past its lease
    new = await store.lease("other-matcher", 5000)
    assert new.held and int(new.token) > int(old.token)
    for attempt in (
        store.snapshot(old.token, 10),
        store.commit(old.token, 1000, b"{}", []),
        store.timers(old.token, 3, 10),
        store.reap(old.token, 1000),
    ):
        try:
            await attempt
        except Fenced:
            continue
        raise AssertionError("a stale matcher wrote")
    assert (await store.lease("paused-matcher", 200)).held is False


async def test_a_socket_opened_while_live_state_is_missing_waits_for_it(service_factory: Any) -> None:
    """A client that connects while a matcher is still building live state (at start, or
    after Redis lost its data) gets `ready` once it is built, not a close."""
    service: Service = await service_factory(with_matcher=False)
    assert service.admin is not None
    admin = await service.connect(service.admin, ready=False)
    assert await admin.quiet(0.5) == []  # no matcher yet: no frame, and no close
    matcher = Matcher(service.settings, service.redis, service.pool)
    task = asyncio.create_task(matcher.run())
    try:
        ready = await admin.next(timeout=4)
        assert ready["type"] == "ready" and ready["role"] == "admin"
        assert (await admin.wait_for("stats", timeout=3))["waiting"] == 0
    finally:
        await cancel_and_wait([task])


async def test_a_frame_sent_while_live_state_is_missing_gets_unavailable_and_changes_nothing(
    service_factory: Any,
) -> None:
    """docs/protocol.md (added): `unavailable` while live state is being rebuilt; nothing
    is applied and the client may retry."""
    service: Service = await service_factory(with_matcher=False)
    keys = Keys(service.settings.redis_prefix)
    await service.redis.set(keys.alive, "1")  # as a matcher's rebuild leaves it
    user = await service.user()
    page = await service.connect(user)
    await service.redis.delete(keys.alive)  # Redis lost its data; no rebuild yet
    reply = await page.call({"type": "request", "kind": "chat", "astrologer_id": None})
    assert (reply["type"], reply["code"]) == ("error", "unavailable")
    assert not await service.redis.exists(keys.user(user.id))
    assert await service.fetch("SELECT 1 FROM requests WHERE user_id = $1", user.id) == []
