"""SPEC §5, the matching rules, one rule per test: lines, offers, breaks, graces,
flow distribution, and per-client queues.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any, Awaitable, Callable


from tests.harness import Account, Client, Service

Factory = Callable[..., Awaitable[Service]]


async def request(client: Client, astrologer_id: str | None = None) -> str:
    ack = await client.ok({"type": "request", "kind": "chat", "astrologer_id": astrologer_id})
    return str(ack["request_id"])


async def users(service: Service, count: int) -> list[Account]:
    return list(await asyncio.gather(*(service.user(f"u{i}") for i in range(count))))


async def on_break(service: Service, account: Account) -> Client:
    console = await service.connect(account)
    await console.ok({"type": "status", "status": "break"})
    return console


async def no_offer(console: Client, seconds: float = 0.5) -> None:
    frames = await console.quiet(seconds)
    assert [f for f in frames if f["type"] == "offer"] == [], frames


async def status_of(service: Service, astrologer: Account) -> dict[str, Any]:
    reply = await service.http.get(
        "/api/v1/astrologers", headers={"authorization": f"Bearer {astrologer.token}"}
    )
    return next(a for a in reply.json()["astrologers"] if a["id"] == astrologer.id)


async def request_state(service: Service, request_id: str) -> str:
    rows = await service.fetch("SELECT state, reason FROM requests WHERE id = $1", request_id)
    return f"{rows[0]['state']}:{rows[0]['reason']}"


async def accept_and_end_later(console: Client) -> str:
    """Accepts the next offer; the session stays open. Returns its id."""
    offer = await console.wait_for("offer")
    return str((await console.ok({"type": "accept", "offer_id": offer["offer_id"]}))["session_id"])


async def accept_and_end(console: Client, offer: dict[str, Any]) -> None:
    ack = await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    await console.ok({"type": "end", "session_id": ack["session_id"]})


# ---- lines --------------------------------------------------------------------------------------


async def test_own_line_is_served_before_the_general_line(service: Service) -> None:
    astro = await service.astrologer()
    console = await on_break(service, astro)
    general_page, direct_page = [await service.connect(u) for u in await users(service, 2)]
    general_id = await request(general_page)  # older, but in the general line
    direct_id = await request(direct_page, astro.id)
    await console.ok({"type": "status", "status": "online"})
    first = await console.wait_for("offer")
    assert first["request_id"] == direct_id and first["direct"] is True
    await accept_and_end(console, first)
    second = await console.wait_for("offer")
    assert second["request_id"] == general_id and second["direct"] is False


async def test_general_line_is_first_in_first_out(service: Service) -> None:
    astro = await service.astrologer()
    console = await on_break(service, astro)
    pages = [await service.connect(u) for u in await users(service, 3)]
    ids = [await request(page) for page in pages]
    await console.ok({"type": "status", "status": "online"})
    offered = []
    for _ in ids:
        offer = await console.wait_for("offer")
        offered.append(offer["request_id"])
        await accept_and_end(console, offer)
    assert offered == ids


async def test_own_line_is_first_in_first_out(service: Service) -> None:
    astro = await service.astrologer()
    console = await on_break(service, astro)
    pages = [await service.connect(u) for u in await users(service, 3)]
    ids = [await request(page, astro.id) for page in pages]
    await console.ok({"type": "status", "status": "online"})
    offered = []
    for _ in ids:
        offer = await console.wait_for("offer")
        assert offer["direct"] is True
        offered.append(offer["request_id"])
        await accept_and_end(console, offer)
    assert offered == ids


async def test_capacity_two_gets_two_offers_at_once(service: Service) -> None:
    astro = await service.astrologer(capacity=2)
    console = await service.online(astro)
    pages = [await service.connect(u) for u in await users(service, 3)]
    ids = [await request(page) for page in pages]
    offers = [await console.wait_for("offer") for _ in range(2)]
    assert [o["request_id"] for o in offers] == ids[:2]
    await no_offer(console, 0.3)  # the third waits: offers plus sessions stay within capacity
    for offer in offers:  # both are open at once
        await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    await no_offer(console, 0.3)
    # The third is first in line. Its `queued` may already say so; if its request
    # reached the matcher before the second's offer was made, it said 2, and the
    # `position` frame that follows within 1 s (SPEC §4) says 1.
    if (await pages[2].wait_for("queued"))["position"] != 1:
        await pages[2].wait_for("position", position=1, timeout=2)


async def test_capacity_raised_by_the_admin_takes_effect(service: Service) -> None:
    astro = await service.astrologer(capacity=1)
    console = await service.online(astro)
    pages = [await service.connect(u) for u in await users(service, 2)]
    ids = [await request(page) for page in pages]
    assert (await console.wait_for("offer"))["request_id"] == ids[0]
    await no_offer(console, 0.3)
    await service.patch(astro.id, capacity=2)
    assert (await console.wait_for("offer", timeout=2))["request_id"] == ids[1]


# ---- declines, expiries, breaks --------------------------------------------------------------------


async def test_declined_general_request_keeps_its_place_and_skips_that_astrologer(
    service: Service,
) -> None:
    decliner = await service.astrologer()
    other = await service.astrologer()
    console = await service.online(decliner)
    other_console = await on_break(service, other)
    first_page, second_page = [await service.connect(u) for u in await users(service, 2)]
    first_id = await request(first_page)
    offer = await console.wait_for("offer")
    assert offer["request_id"] == first_id
    second_id = await request(second_page)
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    assert (await console.wait_for("offer"))["request_id"] == second_id  # not the declined one
    assert (await first_page.wait_for("position", timeout=1.5))["position"] == 1  # its old place
    await other_console.ok({"type": "status", "status": "online"})
    assert (await other_console.wait_for("offer"))["request_id"] == first_id


async def test_declined_request_is_never_offered_to_that_astrologer_again(service: Service) -> None:
    astro = await service.astrologer()
    console = await service.online(astro)
    page = await service.connect((await users(service, 1))[0])
    request_id = await request(page)
    offer = await console.wait_for("offer")
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    await no_offer(console, 0.6)
    await console.ok({"type": "status", "status": "break"})
    await console.ok({"type": "status", "status": "online"})
    await no_offer(console, 0.4)
    assert await request_state(service, request_id) == "open:None"


async def test_expired_general_request_returns_to_the_head(service_factory: Factory) -> None:
    service = await service_factory(offer_timeout_s=0.3)
    astro = await service.astrologer()
    console = await service.online(astro)
    first_page, second_page = [await service.connect(u) for u in await users(service, 2)]
    first_id = await request(first_page)
    offer = await console.wait_for("offer")
    second_id = await request(second_page)
    await console.wait_for("offer_expired", offer_id=offer["offer_id"])
    assert (await console.wait_for("offer"))["request_id"] == second_id
    assert (await first_page.wait_for("position", timeout=1.5))["position"] == 1
    assert await request_state(service, first_id) == "open:None"


async def test_declined_direct_request_is_cancelled_declined(service: Service) -> None:
    astro = await service.astrologer()
    console = await service.online(astro)
    page = await service.connect((await users(service, 1))[0])
    request_id = await request(page, astro.id)
    offer = await console.wait_for("offer")
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    cancelled = await page.wait_for("cancelled")
    assert cancelled == {"type": "cancelled", "request_id": request_id, "reason": "declined"}
    assert await request_state(service, request_id) == "cancelled:declined"


async def test_expired_direct_request_is_cancelled_timeout(service_factory: Factory) -> None:
    service = await service_factory(offer_timeout_s=0.3)
    astro = await service.astrologer()
    console = await service.online(astro)
    page = await service.connect((await users(service, 1))[0])
    request_id = await request(page, astro.id)
    await console.wait_for("offer")
    cancelled = await page.wait_for("cancelled", timeout=3)
    assert cancelled == {"type": "cancelled", "request_id": request_id, "reason": "timeout"}
    await service.eventually("SELECT reason FROM requests WHERE id = $1", "timeout", request_id)


async def test_offers_expire_on_time_while_later_deadlines_are_pending(
    service_factory: Factory,
) -> None:
    """The matcher sleeps until the earliest deadline. An offer made after it looked
    (every request has a max wait far ahead, a disconnect a grace) must still expire
    on time, with nothing else happening to wake the matcher."""
    service = await service_factory(offer_timeout_s=0.5, max_wait_s=600.0, reconnect_grace_s=60.0)
    astro = await service.astrologer()
    console = await service.online(astro)
    away, page = [await service.connect(u) for u in await users(service, 2)]
    await away.close()  # a grace 60 s ahead
    for _ in range(2):
        request_id = await request(page, astro.id)
        offer = await console.wait_for("offer")
        expired = await console.wait_for("offer_expired", timeout=2.5)
        assert expired == {"type": "offer_expired", "offer_id": offer["offer_id"]}
        cancelled = await page.wait_for("cancelled", timeout=1)
        assert cancelled == {"type": "cancelled", "request_id": request_id, "reason": "timeout"}


async def test_missed_offers_put_the_astrologer_on_break(service_factory: Factory) -> None:
    service = await service_factory(offer_timeout_s=0.3, max_missed=2)
    astro = await service.astrologer()
    console = await service.online(astro)
    pages = [await service.connect(u) for u in await users(service, 3)]
    for page in pages[:2]:
        await request(page)
    status = await console.wait_for("status", timeout=3)
    assert status["status"] == "break" and status["reason"] == "missed_offers"
    assert (await status_of(service, astro))["status"] == "break"
    await service.eventually(
        "SELECT reason FROM status_changes WHERE astrologer_id = $1 AND status = 'break'",
        "missed_offers", astro.id,
    )
    await request(pages[2])  # never offered to it: no new offers on break
    await no_offer(console, 0.6)


async def test_any_answer_resets_the_missed_count(service_factory: Factory) -> None:
    service = await service_factory(offer_timeout_s=0.4, max_missed=2)
    astro = await service.astrologer()
    console = await on_break(service, astro)
    pages = [await service.connect(u) for u in await users(service, 4)]
    for page in pages:
        await request(page)
    await console.ok({"type": "status", "status": "online"})
    await console.wait_for("offer")
    await console.wait_for("offer_expired", timeout=3)  # missed: 1
    offer = await console.wait_for("offer")
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})  # answered: 0
    await console.wait_for("offer")
    await console.wait_for("offer_expired", timeout=3)  # missed: 1, not 2
    offer = await console.wait_for("offer")  # still online: it gets the fourth
    assert not [f for f in console.frames if f["type"] == "status"]
    await console.wait_for("offer_expired", timeout=3)  # missed: 2
    status = await console.wait_for("status", timeout=3)
    assert status["status"] == "break" and status["reason"] == "missed_offers"


async def test_break_gets_no_new_offers_answers_open_ones_and_keeps_its_line(service: Service) -> None:
    astro = await service.astrologer(capacity=2)
    console = await service.online(astro)
    general, later, direct = [await service.connect(u) for u in await users(service, 3)]
    await request(general)
    offer = await console.wait_for("offer")
    await console.ok({"type": "status", "status": "break"})
    await request(later)
    direct_id = await request(direct, astro.id)
    await no_offer(console, 0.5)
    ack = await console.ok({"type": "accept", "offer_id": offer["offer_id"]})  # an open one
    assert ack["session_id"]
    assert (await general.wait_for("assigned"))["session_id"] == ack["session_id"]
    assert (await status_of(service, astro))["waiting"] == 1  # its line still waits
    assert await request_state(service, direct_id) == "open:None"
    await console.ok({"type": "status", "status": "online"})
    back = await console.wait_for("offer")
    assert back["request_id"] == direct_id  # its own line first


async def test_astrologer_going_offline_returns_offers_and_cancels_its_line(service: Service) -> None:
    leaver = await service.astrologer()
    other = await service.astrologer()
    console = await service.online(leaver)
    other_console = await on_break(service, other)
    offered, behind, direct = [await service.connect(u) for u in await users(service, 3)]
    offered_id = await request(offered)
    offer = await console.wait_for("offer")
    behind_id = await request(behind)
    direct_id = await request(direct, leaver.id)
    await console.ok({"type": "status", "status": "offline"})
    cancelled = await direct.wait_for("cancelled")
    assert cancelled == {"type": "cancelled", "request_id": direct_id, "reason": "astrologer_offline"}
    assert (await offered.wait_for("position", timeout=1.5))["position"] == 1  # back at the head
    assert (await behind.wait_for("position", timeout=1.5, position=2))["position"] == 2
    assert await request_state(service, offered_id) == "open:None"
    await service.eventually(
        "SELECT outcome IS NOT NULL FROM offers WHERE id = $1", True, offer["offer_id"]
    )
    await other_console.ok({"type": "status", "status": "online"})
    assert (await other_console.wait_for("offer"))["request_id"] == offered_id
    assert await request_state(service, behind_id) == "open:None"


# ---- disconnects and waits ------------------------------------------------------------------------


async def test_user_reconnecting_within_grace_keeps_its_place(service_factory: Factory) -> None:
    service = await service_factory(reconnect_grace_s=1.5)
    accounts = await users(service, 3)
    pages = [await service.connect(u) for u in accounts]
    ids = [await request(page) for page in pages]
    await pages[1].close()
    await asyncio.sleep(0.5)
    page = await service.connect(accounts[1], ready=False)
    ready = await page.next()
    assert ready["state"]["request"]["request_id"] == ids[1]
    assert ready["state"]["request"]["position"] == 2
    await asyncio.sleep(1.2)  # the grace has passed since the disconnect: resumed, not abandoned
    assert await request_state(service, ids[1]) == "open:None"
    assert [f for f in await pages[2].quiet(0.2) if f["type"] == "position"] == []


async def test_user_gone_past_grace_is_abandoned(service_factory: Factory) -> None:
    service = await service_factory(reconnect_grace_s=0.5)
    gone, behind = [await service.connect(u) for u in await users(service, 2)]
    gone_id = await request(gone)
    await request(behind)
    await gone.close()
    await service.eventually(
        "SELECT state || ':' || reason FROM requests WHERE id = $1", "cancelled:abandoned", gone_id
    )
    assert (await behind.wait_for("position", timeout=2))["position"] == 1
    ready = await (await service.connect(gone.account, ready=False)).next()
    assert ready["state"]["request"] is None  # too late to resume



async def test_user_gone_past_grace_is_abandoned_while_an_offer_is_open(
    service_factory: Factory,
) -> None:
    service = await service_factory(reconnect_grace_s=0.5, offer_timeout_s=10)
    astro = await service.astrologer()
    console = await service.online(astro)
    offered, gone = [await service.connect(u) for u in await users(service, 2)]
    await request(offered)
    await console.wait_for("offer")  # open for 10 s
    gone_id = await request(gone)
    await asyncio.sleep(0.6)
    await gone.close()
    await service.eventually(
        "SELECT state || ':' || reason FROM requests WHERE id = $1", "cancelled:abandoned", gone_id,
        timeout=2,
    )


async def test_astrologer_disconnected_goes_offline_after_grace(service_factory: Factory) -> None:
    service = await service_factory(reconnect_grace_s=1.0)
    astro = await service.astrologer()
    console = await service.online(astro)
    seated, direct = [await service.connect(u) for u in await users(service, 2)]
    await request(seated, astro.id)
    await accept_and_end_later(console)
    direct_id = await request(direct, astro.id)  # waits: its only slot holds a session
    await console.close()
    assert (await status_of(service, astro))["status"] == "online"  # within its grace
    cancelled = await direct.wait_for("cancelled", timeout=5)
    assert cancelled == {"type": "cancelled", "request_id": direct_id, "reason": "astrologer_offline"}
    assert (await status_of(service, astro))["status"] == "offline"
    await service.eventually(
        "SELECT reason FROM status_changes WHERE astrologer_id = $1 AND status = 'offline'",
        "disconnected", astro.id,
    )


async def test_astrologer_gone_past_grace_returns_its_open_offers(service_factory: Factory) -> None:
    service = await service_factory(reconnect_grace_s=0.5, offer_timeout_s=10)
    astro = await service.astrologer()
    console = await service.online(astro)
    offered, behind = [await service.connect(u) for u in await users(service, 2)]
    offered_id = await request(offered)
    offer = await console.wait_for("offer")
    await request(behind)
    await asyncio.sleep(0.6)
    await console.close()
    assert (await offered.wait_for("position", timeout=2))["position"] == 1  # back at the head
    assert await request_state(service, offered_id) == "open:None"
    await service.eventually(
        "SELECT outcome FROM offers WHERE id = $1", "returned", offer["offer_id"], timeout=1
    )
    assert (await status_of(service, astro))["status"] == "offline"


async def test_max_wait_cancels_with_timeout(service_factory: Factory) -> None:
    service = await service_factory(max_wait_s=0.5)
    page = await service.connect((await users(service, 1))[0])
    request_id = await request(page)
    cancelled = await page.wait_for("cancelled", timeout=3)
    assert cancelled == {"type": "cancelled", "request_id": request_id, "reason": "timeout"}
    assert await request_state(service, request_id) == "cancelled:timeout"


async def test_max_wait_withdraws_an_open_offer(service_factory: Factory) -> None:
    service = await service_factory(max_wait_s=0.6, offer_timeout_s=10)
    astro = await service.astrologer()
    console = await service.online(astro)
    page = await service.connect((await users(service, 1))[0])
    request_id = await request(page)
    offer = await console.wait_for("offer")
    assert (await page.wait_for("cancelled", timeout=3))["reason"] == "timeout"
    withdrawn = await console.wait_for("offer_withdrawn", timeout=2)
    assert withdrawn["offer_id"] == offer["offer_id"] and withdrawn["reason"] == "cancelled"
    assert await request_state(service, request_id) == "cancelled:timeout"


# ---- flow distribution ----------------------------------------------------------------------------


async def test_top_flow_off_keeps_general_requests_from_top_astrologers(service: Service) -> None:
    await service.set_flow("off")
    top = await service.astrologer(is_top=True)
    console = await service.online(top)
    general, direct = [await service.connect(u) for u in await users(service, 2)]
    general_id = await request(general)
    assert (await general.wait_for("queued"))["eta_seconds"] is None  # nobody who may serve it
    await no_offer(console, 0.5)
    direct_id = await request(direct, top.id)
    offer = await console.wait_for("offer")
    assert offer["request_id"] == direct_id and offer["direct"] is True
    await accept_and_end(console, offer)
    await no_offer(console, 0.4)
    await service.set_flow("on")  # applies to the next decision
    assert (await console.wait_for("offer"))["request_id"] == general_id


async def test_flow_disabled_gets_no_general_requests(service: Service) -> None:
    astro = await service.astrologer(flow_enabled=False)
    console = await service.online(astro)
    general, direct = [await service.connect(u) for u in await users(service, 2)]
    general_id = await request(general)
    await no_offer(console, 0.5)
    direct_id = await request(direct, astro.id)
    offer = await console.wait_for("offer")
    assert offer["request_id"] == direct_id
    await accept_and_end(console, offer)
    await no_offer(console, 0.4)
    await service.patch(astro.id, flow_enabled=True)
    assert (await console.wait_for("offer"))["request_id"] == general_id


async def auto_accept(console: Client, stop: asyncio.Event) -> None:
    """Accepts every offer and ends the session at once, until told to stop."""
    while not stop.is_set():
        try:
            offer = await console.wait_for("offer", timeout=0.2)
        except TimeoutError:
            continue
        await accept_and_end(console, offer)


async def keep_asking(page: Client, rounds: int) -> None:
    for _ in range(rounds):
        await request(page)
        await page.wait_for("session_ended", timeout=30)


async def serve(service: Service, consoles: list[Client], pages: list[Client], rounds: int) -> None:
    stop = asyncio.Event()
    acceptors = [asyncio.create_task(auto_accept(c, stop)) for c in consoles]
    try:
        await asyncio.gather(*(keep_asking(page, rounds) for page in pages))
    finally:
        stop.set()
        await asyncio.gather(*acceptors)


async def general_offers(service: Service) -> list[tuple[Any, str]]:
    rows = await service.fetch(
        "SELECT created_at, astrologer_id::text AS aid FROM offers WHERE NOT direct"
        " ORDER BY created_at, id"
    )
    return [(r["created_at"], r["aid"]) for r in rows]


def assert_within_one_of_fair_share(offers: list[tuple[Any, str]], weights: dict[str, float]) -> None:
    """At every point where the record orders offers, each count is within 1 of its share."""
    total_weight = sum(weights.values())
    counts: Counter[str] = Counter()
    for index, (created_at, aid) in enumerate(offers):
        counts[aid] += 1
        if index + 1 < len(offers) and offers[index + 1][0] == created_at:
            continue  # made in the same instant: their order is not recorded
        total = index + 1
        for other, weight in weights.items():
            share = total * weight / total_weight
            assert abs(counts[other] - share) <= 1, (total, dict(counts), other, share)


async def test_weights_are_respected(service: Service) -> None:
    heavy = await service.astrologer("heavy", weight=2, capacity=50)
    light = await service.astrologer("light", weight=1, capacity=50)
    consoles = [await service.online(heavy), await service.online(light)]
    pages = [await service.connect(u) for u in await users(service, 10)]
    await serve(service, consoles, pages, rounds=3)
    offers = await general_offers(service)
    assert len(offers) == 30
    counts = Counter(aid for _, aid in offers)
    assert abs(counts[heavy.id] - 20) <= 1 and abs(counts[light.id] - 10) <= 1, counts
    assert_within_one_of_fair_share(offers, {heavy.id: 2, light.id: 1})


async def test_boost_multiplies_a_top_astrologers_weight(service: Service) -> None:
    await service.set_flow("boost", 3)
    top = await service.astrologer("top", is_top=True, capacity=50)
    regular = await service.astrologer("regular", capacity=50)
    consoles = [await service.online(top), await service.online(regular)]
    pages = [await service.connect(u) for u in await users(service, 10)]
    await serve(service, consoles, pages, rounds=2)
    offers = await general_offers(service)
    counts = Counter(aid for _, aid in offers)
    assert abs(counts[top.id] - 15) <= 1 and abs(counts[regular.id] - 5) <= 1, counts
    assert_within_one_of_fair_share(offers, {top.id: 3, regular.id: 1})


async def test_newcomer_starts_level_without_a_catch_up_burst(service: Service) -> None:
    early = await service.astrologer("early", capacity=50)
    late = await service.astrologer("late", capacity=50)
    early_console = await service.online(early)
    pages = [await service.connect(u) for u in await users(service, 10)]
    await serve(service, [early_console], pages, rounds=1)
    before = len(await general_offers(service))
    assert before == 10
    late_console = await service.online(late)
    await serve(service, [early_console, late_console], pages, rounds=1)
    since = (await general_offers(service))[before:]
    counts = Counter(aid for _, aid in since)
    assert abs(counts[late.id] - 5) <= 1 and abs(counts[early.id] - 5) <= 1, counts
    assert_within_one_of_fair_share(since, {early.id: 1, late.id: 1})


# ---- per-client queues ------------------------------------------------------------------------------


async def test_frames_of_one_client_are_applied_in_order(service: Service) -> None:
    astro = await service.astrologer()
    console = await service.connect(astro)
    statuses = ["online", "break", "offline", "online", "break"] * 4
    for i, status in enumerate(statuses):
        await console.send({"type": "status", "status": status, "ref": str(i)})
    acks = [await console.wait_for("ack") for _ in statuses]
    assert [a["ref"] for a in acks] == [str(i) for i in range(len(statuses))]
    assert (await status_of(service, astro))["status"] == "break"


async def test_one_clients_burst_does_not_hold_up_another(service_factory: Factory) -> None:
    service = await service_factory(ws_rate=10_000, ws_burst=10_000)
    flooder_account, other_account = await users(service, 2)
    flooder = await service.connect(flooder_account)
    other = await service.connect(other_account)
    loop = asyncio.get_running_loop()
    flood_answers: list[float] = []
    other_ack: list[float] = []

    async def read_flood() -> None:
        while len(flood_answers) < 300:
            frame = await flooder.next(timeout=30)
            if frame["type"] == "error":
                assert frame["code"] == "not_found"
                flood_answers.append(loop.time())

    reader = asyncio.create_task(read_flood())
    await asyncio.gather(*(
        flooder.send({"type": "cancel", "request_id": str(uuid.uuid4()), "ref": f"f{i}"})
        for i in range(300)
    ))
    await other.send({"type": "request", "kind": "chat", "astrologer_id": None, "ref": "mine"})
    frame = await other.wait_for("ack", timeout=30)
    other_ack.append(loop.time())
    assert frame["ref"] == "mine"
    await asyncio.wait_for(reader, 30)
    answered_before = sum(1 for t in flood_answers if t < other_ack[0])
    assert answered_before < 150, answered_before  # the other client did not wait its turn
