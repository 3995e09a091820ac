"""SPEC §3, the HTTP API, one rule per test: status codes, error codes, body shapes.

Assertions match error codes, never message text.
"""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio

from tests.harness import PASSWORD, Account, Service, start_service, stop_service

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ASTROLOGERS = "/api/v1/astrologers"
ADMIN_ASTROLOGERS = "/api/v1/admin/astrologers"
FLOW = "/api/v1/admin/flow"
STATS = "/api/v1/admin/stats"

ASTROLOGER_FIELDS = {
    "id", "name", "email", "is_top", "weight", "capacity", "flow_enabled", "languages", "status",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared(store_urls: tuple[str, str]) -> AsyncIterator[Service]:
    """One live service for the tests below that only read, or write rows of their own."""
    service = await start_service(*store_urls)
    yield service
    await stop_service(service)


def bearer(account: Account | str) -> dict[str, str]:
    token = account if isinstance(account, str) else account.token
    return {"authorization": f"Bearer {token}"}


def email() -> str:
    return f"someone-{uuid.uuid4().hex[:10]}@example.test"


def assert_error(reply: httpx.Response, status: int, code: str | None = None) -> None:
    """The SPEC's error body: {"error": {"code", "message"}} with a fitting status."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body


async def me(service: Service, account: Account) -> dict[str, Any]:
    reply = await service.http.get("/api/v1/me", headers=bearer(account))
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def astrologer_list(service: Service, account: Account) -> dict[str, dict[str, Any]]:
    reply = await service.http.get(ASTROLOGERS, headers=bearer(account))
    assert reply.status_code == 200, reply.text
    return {a["id"]: a for a in reply.json()["astrologers"]}


# ---- register -------------------------------------------------------------------------


async def test_register_returns_201_with_user(shared: Service) -> None:
    address = email()
    reply = await shared.http.post(
        REGISTER, json={"email": address, "password": "long-enough", "name": "Ada"}
    )
    assert reply.status_code == 201, reply.text
    user = reply.json()["user"]
    assert set(user) == {"id", "email", "name", "role"}
    assert uuid.UUID(user["id"])
    assert user["email"] == address and user["name"] == "Ada" and user["role"] == "user"


async def test_register_accepts_any_domain(shared: Service) -> None:
    for address in (f"a{uuid.uuid4().hex[:6]}@localhost", f"b{uuid.uuid4().hex[:6]}@x.invalid"):
        reply = await shared.http.post(
            REGISTER, json={"email": address, "password": PASSWORD, "name": "Any"}
        )
        assert reply.status_code == 201, (address, reply.text)


async def test_register_same_email_twice_is_409_email_taken(shared: Service) -> None:
    address = email()
    body = {"email": address, "password": PASSWORD, "name": "First"}
    assert (await shared.http.post(REGISTER, json=body)).status_code == 201
    reply = await shared.http.post(REGISTER, json={**body, "name": "Second"})
    assert_error(reply, 409, "email_taken")


async def test_register_short_password_is_422(shared: Service) -> None:
    reply = await shared.http.post(
        REGISTER, json={"email": email(), "password": "1234567", "name": "Short"}
    )
    assert_error(reply, 422, "invalid_input")


async def test_register_bad_email_is_422(shared: Service) -> None:
    for address in ("no-at-sign", "two@@example.test", "@example.test", "local@", "a b@c"):
        reply = await shared.http.post(
            REGISTER, json={"email": address, "password": PASSWORD, "name": "Bad"}
        )
        assert_error(reply, 422, "invalid_input")


async def test_register_missing_name_is_422(shared: Service) -> None:
    reply = await shared.http.post(REGISTER, json={"email": email(), "password": PASSWORD})
    assert_error(reply, 422, "invalid_input")


# ---- login and refresh -----------------------------------------------------------------


async def test_login_returns_tokens_and_user(shared: Service) -> None:
    address = email()
    await shared.http.post(REGISTER, json={"email": address, "password": PASSWORD, "name": "Lu"})
    reply = await shared.http.post(LOGIN, json={"email": address, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert {"access_token", "refresh_token", "token_type", "expires_in", "user"} <= set(body)
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert body["token_type"] == "bearer"
    assert isinstance(body["expires_in"], (int, float)) and body["expires_in"] > 0
    assert body["user"]["email"] == address and body["user"]["role"] == "user"
    me_reply = await shared.http.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me_reply.status_code == 200


async def test_login_wrong_password_is_401_invalid_credentials(shared: Service) -> None:
    user = await shared.user()
    reply = await shared.http.post(LOGIN, json={"email": user.email, "password": "wrong-password"})
    assert_error(reply, 401, "invalid_credentials")
    reply = await shared.http.post(LOGIN, json={"email": email(), "password": PASSWORD})
    assert_error(reply, 401, "invalid_credentials")


async def test_login_is_throttled_after_repeated_failures(
    service_factory: Callable[..., Awaitable[Service]],
) -> None:
    service = await service_factory(login_fails=3)
    user = await service.user()
    for _ in range(3):
        reply = await service.http.post(LOGIN, json={"email": user.email, "password": "wrong-pass"})
        assert_error(reply, 401, "invalid_credentials")
    reply = await service.http.post(LOGIN, json={"email": user.email, "password": "wrong-pass"})
    assert_error(reply, 429, "too_many_attempts")
    other = await service.user()  # counted per email: another account still logs in
    reply = await service.http.post(LOGIN, json={"email": other.email, "password": PASSWORD})
    assert reply.status_code == 200


async def test_refresh_rotates_tokens(shared: Service) -> None:
    user = await shared.user()
    reply = await shared.http.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "bearer" and body["user"]["id"] == user.id
    assert body["refresh_token"] != user.refresh_token
    me_reply = await shared.http.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me_reply.status_code == 200
    again = await shared.http.post(REFRESH, json={"refresh_token": body["refresh_token"]})
    assert again.status_code == 200, again.text


async def test_refresh_token_reused_is_401_invalid_token(shared: Service) -> None:
    user = await shared.user()
    first = await shared.http.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert first.status_code == 200
    reused = await shared.http.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert_error(reused, 401, "invalid_token")


async def test_access_token_used_as_refresh_is_401(shared: Service) -> None:
    user = await shared.user()
    reply = await shared.http.post(REFRESH, json={"refresh_token": user.token})
    assert_error(reply, 401, "invalid_token")
    reply = await shared.http.post(REFRESH, json={"refresh_token": "not-a-token"})
    assert_error(reply, 401, "invalid_token")


# ---- me and the astrologer list -----------------------------------------------------------


async def test_me_for_a_user(shared: Service) -> None:
    user = await shared.user("Mia")
    body = await me(shared, user)
    assert body["user"] == {"id": user.id, "email": user.email.lower(), "name": "Mia", "role": "user"}
    assert "astrologer" not in body or body["astrologer"] is None


async def test_me_for_an_astrologer_includes_astrologer(shared: Service) -> None:
    astro = await shared.astrologer(
        "Orion", is_top=True, weight=2.5, capacity=3, languages=["en", "hi"]
    )
    body = await me(shared, astro)
    assert body["user"]["role"] == "astrologer" and body["user"]["id"] == astro.id
    a = body["astrologer"]
    assert set(a) == ASTROLOGER_FIELDS
    assert a["id"] == astro.id and a["name"] == "Orion" and a["email"] == astro.email.lower()
    assert a["is_top"] is True and a["weight"] == 2.5 and a["capacity"] == 3
    assert a["flow_enabled"] is True and a["languages"] == ["en", "hi"]
    assert a["status"] == "offline"


async def test_astrologer_defaults(shared: Service) -> None:
    astro = await shared.astrologer("Plain")
    a = (await me(shared, astro))["astrologer"]
    assert a["is_top"] is False and a["weight"] == 1 and a["capacity"] == 1
    assert a["flow_enabled"] is True and a["languages"] == []


async def test_astrologer_list_fields_and_direct_waiting(shared: Service) -> None:
    astro = await shared.astrologer("Lyra", languages=["en"])
    other = await shared.astrologer("Altair")
    user = await shared.user()
    listed = await astrologer_list(shared, user)
    assert {astro.id, other.id} <= set(listed)
    for entry in listed.values():
        assert set(entry) == {"id", "name", "is_top", "status", "languages", "waiting"}
    assert listed[astro.id] == {
        "id": astro.id, "name": "Lyra", "is_top": False, "status": "offline",
        "languages": ["en"], "waiting": 0,
    }
    console = await shared.connect(astro)
    await console.ok({"type": "status", "status": "break"})  # keeps its line, gets no offers
    page = await shared.connect(user)
    await page.ok({"type": "request", "kind": "chat", "astrologer_id": astro.id})
    general = await shared.user()
    await (await shared.connect(general)).ok({"type": "request", "kind": "chat", "astrologer_id": None})
    listed = await astrologer_list(shared, user)
    assert listed[astro.id]["status"] == "break" and listed[astro.id]["waiting"] == 1
    assert listed[other.id]["waiting"] == 0  # general requests are not anyone's direct line


# ---- admin ---------------------------------------------------------------------------------


async def test_admin_creates_astrologer_201(shared: Service) -> None:
    address = email()
    reply = await shared.http.post(
        ADMIN_ASTROLOGERS,
        json={"email": address, "password": PASSWORD, "name": "Nova", "is_top": True,
              "weight": 3, "capacity": 2, "languages": ["ta"]},
        headers=shared.admin_headers(),
    )
    assert reply.status_code == 201, reply.text
    a = reply.json()["astrologer"]
    assert ASTROLOGER_FIELDS - {"status"} <= set(a)
    assert a["name"] == "Nova" and a["email"] == address and a["is_top"] is True
    assert a["weight"] == 3 and a["capacity"] == 2 and a["languages"] == ["ta"]
    assert a["flow_enabled"] is True
    login = await shared.login(address, PASSWORD)
    assert login["user"]["role"] == "astrologer" and login["user"]["id"] == a["id"]


async def test_admin_paths_forbidden_for_user_and_astrologer(service: Service) -> None:
    user = await service.user()
    astro = await service.astrologer()
    for account in (user, astro):
        headers = bearer(account)
        calls = [
            service.http.post(
                ADMIN_ASTROLOGERS,
                json={"email": email(), "password": PASSWORD, "name": "X"},
                headers=headers,
            ),
            service.http.patch(f"{ADMIN_ASTROLOGERS}/{astro.id}", json={"weight": 5}, headers=headers),
            service.http.get(FLOW, headers=headers),
            service.http.put(FLOW, json={"top_flow": "off"}, headers=headers),
            service.http.get(STATS, headers=headers),
        ]
        for call in calls:
            assert_error(await call, 403, "forbidden")
    a = (await me(service, astro))["astrologer"]
    assert a["weight"] == 1
    flow = await service.http.get(FLOW, headers=service.admin_headers())
    assert flow.json()["top_flow"] == "on"


async def test_admin_create_bad_values_are_422_and_create_nothing(shared: Service) -> None:
    user = await shared.user()
    known = set(await astrologer_list(shared, user))
    bad_fields: list[dict[str, Any]] = [
        {"weight": 0}, {"weight": -1}, {"capacity": 0}, {"capacity": 1.5}, {"is_top": "yes"},
    ]
    addresses = []
    for fields in bad_fields:
        address = email()
        addresses.append(address)
        reply = await shared.http.post(
            ADMIN_ASTROLOGERS,
            json={"email": address, "password": PASSWORD, "name": "Bad", **fields},
            headers=shared.admin_headers(),
        )
        assert_error(reply, 422, "invalid_input")
    assert set(await astrologer_list(shared, user)) == known
    for address in addresses:
        reply = await shared.http.post(LOGIN, json={"email": address, "password": PASSWORD})
        assert_error(reply, 401, "invalid_credentials")


async def test_admin_accepts_any_whole_capacity_from_1(shared: Service) -> None:
    reply = await shared.http.post(
        ADMIN_ASTROLOGERS,
        json={"email": email(), "password": PASSWORD, "name": "Wide", "capacity": 1500},
        headers=shared.admin_headers(),
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["astrologer"]["capacity"] == 1500


async def test_admin_patch_changes_fields(shared: Service) -> None:
    astro = await shared.astrologer("Before")
    body = await shared.patch(
        astro.id, name="After", is_top=True, weight=2, capacity=4, flow_enabled=False, languages=["fr"]
    )
    a = body["astrologer"]
    assert set(a) == ASTROLOGER_FIELDS
    assert (a["name"], a["is_top"], a["weight"], a["capacity"], a["flow_enabled"], a["languages"]) == (
        "After", True, 2, 4, False, ["fr"],
    )
    mine = (await me(shared, astro))["astrologer"]
    assert (
        mine["name"], mine["is_top"], mine["weight"], mine["capacity"], mine["flow_enabled"],
        mine["languages"],
    ) == ("After", True, 2, 4, False, ["fr"])


async def test_admin_patch_bad_values_are_422_and_change_nothing(shared: Service) -> None:
    astro = await shared.astrologer("Steady", weight=2, capacity=2)
    before = (await me(shared, astro))["astrologer"]
    for fields in (
        {"name": "Changed", "weight": 0},
        {"name": "Changed", "weight": -3},
        {"name": "Changed", "capacity": 0},
        {"name": "Changed", "capacity": 1.5},
        {"name": "Changed", "flow_enabled": "no"},
    ):
        reply = await shared.http.patch(
            f"{ADMIN_ASTROLOGERS}/{astro.id}", json=fields, headers=shared.admin_headers()
        )
        assert_error(reply, 422, "invalid_input")
    assert (await me(shared, astro))["astrologer"] == before
    listed = await astrologer_list(shared, astro)
    assert listed[astro.id]["name"] == "Steady"


async def test_admin_patch_unknown_astrologer_is_404(shared: Service) -> None:
    reply = await shared.http.patch(
        f"{ADMIN_ASTROLOGERS}/{uuid.uuid4()}", json={"weight": 2}, headers=shared.admin_headers()
    )
    assert_error(reply, 404, "not_found")


async def test_flow_get_and_put(service: Service) -> None:
    reply = await service.http.get(FLOW, headers=service.admin_headers())
    assert reply.status_code == 200
    body = reply.json()
    assert body["top_flow"] == "on" and isinstance(body["boost"], (int, float)) and body["boost"] > 0
    for top_flow in ("off", "boost", "on"):
        reply = await service.http.put(
            FLOW, json={"top_flow": top_flow, "boost": 3}, headers=service.admin_headers()
        )
        assert reply.status_code == 200, reply.text
        got = (await service.http.get(FLOW, headers=service.admin_headers())).json()
        assert got == {"top_flow": top_flow, "boost": 3}


async def test_flow_unknown_top_flow_is_422_and_changes_nothing(service: Service) -> None:
    before = (await service.http.get(FLOW, headers=service.admin_headers())).json()
    for body in ({"top_flow": "sometimes"}, {"top_flow": None}, {}, {"top_flow": "boost", "boost": 0}):
        reply = await service.http.put(FLOW, json=body, headers=service.admin_headers())
        assert_error(reply, 422, "invalid_input")
    assert (await service.http.get(FLOW, headers=service.admin_headers())).json() == before


async def test_stats_shape(service: Service) -> None:
    busy = await service.astrologer("Busy")
    resting = await service.astrologer("Resting")
    console = await service.online(busy)
    await (await service.connect(resting)).ok({"type": "status", "status": "break"})
    first = await service.connect(await service.user())
    await first.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    offer = await console.wait_for("offer")
    await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    await first.wait_for("assigned")
    second = await service.connect(await service.user())
    await second.ok({"type": "request", "kind": "call", "astrologer_id": None})
    reply = await service.http.get(STATS, headers=service.admin_headers())
    assert reply.status_code == 200, reply.text
    stats = reply.json()
    assert {"waiting", "online", "busy", "assigned_today", "astrologers"} <= set(stats)
    assert (stats["waiting"], stats["online"], stats["busy"], stats["assigned_today"]) == (1, 1, 1, 1)
    rows = {a["id"]: a for a in stats["astrologers"]}
    assert set(rows) == {busy.id, resting.id}
    for row in rows.values():
        assert {"id", "name", "status", "assigned_today", "share"} <= set(row)
    row = rows[busy.id]
    assert (row["name"], row["status"], row["assigned_today"], row["share"]) == ("Busy", "online", 1, 1)
    row = rows[resting.id]
    assert (row["status"], row["assigned_today"], row["share"]) == ("break", 0, 0)


# ---- errors, health, metrics, audit -----------------------------------------------------------


async def test_without_token_is_401(shared: Service) -> None:
    for path in ("/api/v1/me", ASTROLOGERS, FLOW, STATS):
        assert_error(await shared.http.get(path), 401)
    assert_error(await shared.http.get("/api/v1/me", headers=bearer("garbage")), 401)


async def test_bad_json_body_is_400_bad_json(shared: Service) -> None:
    headers = {"content-type": "application/json"}
    for path in (REGISTER, LOGIN, REFRESH):
        reply = await shared.http.post(path, content=b'{"email": ', headers=headers)
        assert_error(reply, 400, "bad_json")
    reply = await shared.http.put(FLOW, content=b"{nope", headers={**headers, **shared.admin_headers()})
    assert_error(reply, 400, "bad_json")


async def test_every_error_has_the_error_body(shared: Service) -> None:
    user = await shared.user()
    replies = [
        (await shared.http.post(REGISTER, json={"email": "x", "password": "p", "name": ""}), 422),
        (await shared.http.post(
            REGISTER, json={"email": user.email, "password": PASSWORD, "name": "n"}), 409),
        (await shared.http.post(LOGIN, json={"email": user.email, "password": "wrong-pass"}), 401),
        (await shared.http.post(REFRESH, json={"refresh_token": "x"}), 401),
        (await shared.http.get("/api/v1/me"), 401),
        (await shared.http.get(STATS, headers=bearer(user)), 403),
        (await shared.http.patch(f"{ADMIN_ASTROLOGERS}/{uuid.uuid4()}", json={"weight": 1},
                                  headers=shared.admin_headers()), 404),
        (await shared.http.post(
            LOGIN, content=b"[", headers={"content-type": "application/json"}), 400),
        (await shared.http.post(REGISTER, content=b"x" * (70 * 1024),
                                 headers={"content-type": "application/json"}), 413),
    ]
    for reply, status in replies:
        assert_error(reply, status)


async def test_unknown_api_path_is_404_with_error_body(shared: Service) -> None:
    reply = await shared.http.get("/api/v1/no-such-thing", headers=shared.admin_headers())
    assert_error(reply, 404)


async def test_healthz_and_readyz(shared: Service) -> None:
    assert (await shared.http.get("/healthz")).status_code == 200
    assert (await shared.http.get("/readyz")).status_code == 200


async def test_metrics_are_prometheus_text(shared: Service) -> None:
    reply = await shared.http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert "# TYPE astroq_" in reply.text
    assert "astroq_" in reply.text


async def test_admin_changes_are_audited(service: Service) -> None:
    astro = await service.astrologer("Audited", weight=1)
    await service.patch(astro.id, weight=4)
    await service.set_flow("off")
    rows = await service.fetch(
        "SELECT admin_id::text AS admin_id, target_id::text AS target_id, before, after"
        " FROM admin_changes ORDER BY id"
    )
    assert len(rows) == 3
    assert all(r["admin_id"] == service.admin.id for r in rows)  # type: ignore[union-attr]
    created, patched, flow = rows
    assert created["target_id"] == astro.id and created["before"] is None
    assert created["after"]["weight"] == 1
    assert patched["target_id"] == astro.id
    assert patched["before"]["weight"] == 1 and patched["after"]["weight"] == 4
    assert flow["before"]["top_flow"] == "on" and flow["after"]["top_flow"] == "off"
