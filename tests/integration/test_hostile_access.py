"""No client can act for another client or beyond its role (SPEC §4, §6).

Each test sets up real requests, offers and sessions, lets a hostile account aim
frames at them, and then checks three things: the answer is the documented code
(`not_found` for an id that is not the sender's, `forbidden` for a frame of the
wrong role, HTTP 403 for a non-admin on an admin path), the victims' sockets hear
nothing, and PostgreSQL is exactly as it was, row for row.
"""

from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable

from tests.harness import Account, Client, Service

Factory = Callable[..., Awaitable[Service]]

# Every table of the record, in an order that makes two snapshots comparable.
RECORD = {
    "users": "SELECT * FROM users ORDER BY id",
    "astrologers": "SELECT * FROM astrologers ORDER BY id",
    "requests": "SELECT * FROM requests ORDER BY id",
    "offers": "SELECT * FROM offers ORDER BY id",
    "sessions": "SELECT * FROM sessions ORDER BY id",
    "status_changes": "SELECT * FROM status_changes ORDER BY id",
    "flow_settings": "SELECT * FROM flow_settings",
    "admin_changes": "SELECT * FROM admin_changes ORDER BY id",
    "refresh_tokens": "SELECT * FROM refresh_tokens ORDER BY jti",
}

# Frames a victim would get if a hostile frame had been applied to its request or session.
CONSEQUENCES = {
    "cancelled", "session_ended", "assigned", "offer_withdrawn", "offer_expired", "offer", "status",
}


async def record(service: Service) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r.items()) for r in await service.fetch(sql)] for name, sql in RECORD.items()}


async def refused(client: Client, frame: dict[str, Any], code: str) -> None:
    reply = await client.call(frame)
    assert reply["type"] == "error" and reply["code"] == code, (frame, reply)


async def settle(*clients: Client) -> None:
    """Lets the frames the setup caused arrive, so that later silence means something."""
    for client in clients:
        await client.quiet(0.2)


async def heard_nothing(*clients: Client) -> None:
    for client in clients:
        frames = await client.quiet(0.3)
        assert not [f for f in frames if f.get("type") in CONSEQUENCES], frames


async def astrologer_status(service: Service, viewer: Account, astrologer_id: str) -> str:
    reply = await service.http.get(
        "/api/v1/astrologers", headers={"authorization": f"Bearer {viewer.token}"}
    )
    return next(a["status"] for a in reply.json()["astrologers"] if a["id"] == astrologer_id)


async def in_session(service: Service, astro: Account, console: Client) -> tuple[Account, Client, str, str]:
    """A new user in a session with `astro`: (user, page, request_id, session_id)."""
    user = await service.user()
    page = await service.connect(user)
    ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": astro.id})
    request_id = ack["request_id"]
    offer = await console.wait_for("offer", request_id=request_id)
    session_id = (await console.ok({"type": "accept", "offer_id": offer["offer_id"]}))["session_id"]
    await page.wait_for("assigned", session_id=session_id)
    await console.wait_for("assigned", session_id=session_id)
    return user, page, request_id, session_id


async def test_a_user_cannot_cancel_end_or_see_anothers_request_or_session(
    service_factory: Factory,
) -> None:
    service = await service_factory(offer_timeout_s=60.0)
    astro = await service.astrologer()
    console = await service.online(astro)
    owner, owner_page, assigned_request, session_id = await in_session(service, astro, console)
    waiter = await service.user()
    waiter_page = await service.connect(waiter)
    ack = await waiter_page.ok({"type": "request", "kind": "call", "astrologer_id": None})
    waiting_request = ack["request_id"]
    await waiter_page.wait_for("queued")
    mallory = await service.user("mallory")
    hostile = await service.connect(mallory)
    await settle(owner_page, waiter_page, console)
    before = await record(service)

    for frame in (
        {"type": "cancel", "request_id": waiting_request},
        {"type": "cancel", "request_id": assigned_request},
        {"type": "cancel", "request_id": waiting_request, "user_id": waiter.id},  # acting "as" the owner
        {"type": "cancel", "request_id": session_id},  # a session's id where a request's belongs
        {"type": "cancel", "request_id": str(uuid.uuid4())},
        {"type": "end", "session_id": session_id},
        {"type": "end", "session_id": session_id, "user_id": owner.id},
        {"type": "end", "session_id": assigned_request},
        {"type": "end", "session_id": waiting_request},
    ):
        await refused(hostile, frame, "not_found")
    # A user with a request of its own fares no better against someone else's session.
    await refused(waiter_page, {"type": "end", "session_id": session_id}, "not_found")
    await refused(waiter_page, {"type": "cancel", "request_id": assigned_request}, "not_found")

    await heard_nothing(owner_page, waiter_page, console)
    assert await record(service) == before
    # Nothing about other users' requests reaches the hostile account.
    again = await service.connect(mallory)
    assert again.frames[-1]["state"] == {"request": None, "session": None}
    seen = [f for f in hostile.frames + again.frames if f.get("type") not in ("ack", "error", "ready")]
    assert seen == [], seen
    me = (await service.http.get("/api/v1/me", headers={"authorization": f"Bearer {mallory.token}"})).json()
    assert set(me) == {"user"}

    # The owners' own requests and sessions were untouched: they still answer to them.
    await waiter_page.ok({"type": "cancel", "request_id": waiting_request})
    await owner_page.ok({"type": "end", "session_id": session_id})


async def test_a_request_is_always_the_senders_own(service: Service) -> None:
    """Naming another user in a request frame does not make the request theirs."""
    victim = await service.user()
    victim_page = await service.connect(victim)
    mallory = await service.user()
    hostile = await service.connect(mallory)
    reply = await hostile.call(
        {"type": "request", "kind": "chat", "astrologer_id": None, "user_id": victim.id, "uid": victim.id}
    )
    if reply["type"] == "ack":
        rows = await service.fetch(
            "SELECT user_id::text AS uid FROM requests WHERE id = $1", reply["request_id"]
        )
        assert [r["uid"] for r in rows] == [mallory.id]
    else:
        assert reply["code"] == "invalid_input", reply
    assert await service.fetch("SELECT id FROM requests WHERE user_id = $1", victim.id) == []
    await heard_nothing(victim_page)
    again = await service.connect(victim)
    assert again.frames[-1]["state"] == {"request": None, "session": None}


async def test_an_astrologer_cannot_answer_or_end_for_another(service_factory: Factory) -> None:
    service = await service_factory(offer_timeout_s=60.0)
    owner, rival = await service.astrologer("owner"), await service.astrologer("rival")
    owner_console, rival_console = await service.online(owner), await service.online(rival)
    user = await service.user()
    page = await service.connect(user)
    ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": owner.id})
    request_id = ack["request_id"]
    offer_id = (await owner_console.wait_for("offer", request_id=request_id))["offer_id"]
    await settle(owner_console, rival_console, page)
    before = await record(service)

    for frame in (
        {"type": "accept", "offer_id": offer_id},
        {"type": "decline", "offer_id": offer_id},
        {"type": "accept", "offer_id": offer_id, "astrologer_id": owner.id},
        {"type": "accept", "offer_id": request_id},  # a request's id where an offer's belongs
        {"type": "decline", "offer_id": str(uuid.uuid4())},
        {"type": "end", "session_id": request_id},
    ):
        await refused(rival_console, frame, "not_found")
    # A user cannot answer the offer made about its own request either.
    await refused(page, {"type": "accept", "offer_id": offer_id}, "forbidden")
    await heard_nothing(owner_console, page)
    assert await record(service) == before

    # The offer is still the owner's to answer.
    session_id = (await owner_console.ok({"type": "accept", "offer_id": offer_id}))["session_id"]
    await page.wait_for("assigned", session_id=session_id)
    await owner_console.wait_for("assigned", session_id=session_id)
    await settle(owner_console, page)
    before = await record(service)
    await refused(rival_console, {"type": "end", "session_id": session_id}, "not_found")
    await refused(rival_console, {"type": "accept", "offer_id": offer_id}, "not_found")
    await heard_nothing(owner_console, page)
    assert await record(service) == before
    await owner_console.ok({"type": "end", "session_id": session_id})


async def test_frames_of_the_wrong_role_are_forbidden(service: Service) -> None:
    astro = await service.astrologer()
    console = await service.connect(astro)  # offline: a status frame from anyone else must not change that
    user = await service.user()
    page = await service.connect(user)
    admin = await service.connect(service.admin)
    some_id = str(uuid.uuid4())
    before = await record(service)

    astrologer_frames: list[dict[str, Any]] = [
        {"type": "status", "status": "online"},
        {"type": "accept", "offer_id": some_id},
        {"type": "decline", "offer_id": some_id},
    ]
    user_frames: list[dict[str, Any]] = [
        {"type": "request", "kind": "chat", "astrologer_id": None},
        {"type": "request", "kind": "call", "astrologer_id": astro.id},
        {"type": "cancel", "request_id": some_id},
    ]
    for frame in astrologer_frames:
        await refused(page, frame, "forbidden")
    for frame in user_frames:
        await refused(console, frame, "forbidden")
    for frame in [*astrologer_frames, *user_frames, {"type": "end", "session_id": some_id}]:
        await refused(admin, frame, "forbidden")

    assert await record(service) == before
    assert await astrologer_status(service, user, astro.id) == "offline"
    again = await service.connect(user)
    assert again.frames[-1]["state"] == {"request": None, "session": None}
    await heard_nothing(console)


ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/admin/stats", None),
    ("GET", "/api/v1/admin/flow", None),
    ("PUT", "/api/v1/admin/flow", {"top_flow": "off"}),
    ("PUT", "/api/v1/admin/flow", {"top_flow": "boost", "boost": 50}),
    ("POST", "/api/v1/admin/astrologers", {"email": "x@y.z", "password": "long-enough", "name": "Fake"}),
    ("PATCH", "/api/v1/admin/astrologers/{astro}", {"is_top": True, "weight": 100}),
    ("PATCH", "/api/v1/admin/astrologers/{astro}", {"flow_enabled": False}),
    ("PATCH", "/api/v1/admin/astrologers/{user}", {"capacity": 5}),
    ("PATCH", "/api/v1/admin/astrologers/{missing}", {"capacity": 5}),
]


async def test_non_admins_get_403_on_every_admin_path(service: Service) -> None:
    astro = await service.astrologer()
    user = await service.user()
    ids = {"astro": astro.id, "user": user.id, "missing": str(uuid.uuid4())}
    before = await record(service)
    for account in (user, astro):
        for method, path, body in ADMIN_CALLS:
            reply = await service.http.request(
                method,
                path.format(**ids),
                json=body,
                headers={"authorization": f"Bearer {account.token}"},
            )
            assert reply.status_code == 403, (account.role, method, path, reply.text)
            assert reply.json()["error"]["code"] == "forbidden", reply.text
    for method, path, body in ADMIN_CALLS:
        reply = await service.http.request(method, path.format(**ids), json=body)
        assert reply.status_code == 401, (method, path, reply.text)
    assert await record(service) == before
    # The admin's own view agrees: nothing moved.
    flow = await service.http.get("/api/v1/admin/flow", headers=service.admin_headers())
    assert flow.json()["top_flow"] == "on"
