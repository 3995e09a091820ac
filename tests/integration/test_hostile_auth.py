"""Hostile credentials and handshakes: forged and misused JWTs, a deleted account's
token, forbidden Origins, and login brute force (SPEC §2, §3, §4, §6).

A token the server did not issue for this purpose is refused everywhere: the
socket closes 4401 (first frame or Authorization header alike) and HTTP answers
401 `invalid_token`. Forged tokens are built by hand: base64url for alg none and
for tampered payloads, pyjwt for HS tokens, and a small RSA signer below for RS256
(no crypto library needed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import jwt
import orjson
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import JWT_SECRET, PASSWORD, Account, Client, Service, start_service, stop_service

Factory = Callable[..., Awaitable[Service]]

ME = "/api/v1/me"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
STATS = "/api/v1/admin/stats"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared(store_urls: tuple[str, str]) -> AsyncIterator[Service]:
    """One live service; every test here makes accounts of its own."""
    service = await start_service(*store_urls)
    yield service
    await stop_service(service)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def accounts(shared: Service) -> tuple[Account, Account]:
    """(victim, other): two users the forgeries below are made for; never changed."""
    return await shared.user("victim"), await shared.user("other")


# ---- building tokens ---------------------------------------------------------------------


def b64url(data: bytes | dict[str, Any]) -> str:
    raw = orjson.dumps(data) if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(account: Account, **changes: Any) -> dict[str, Any]:
    """Claims shaped like the server's own (sub, role, type, iat, exp, jti)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": account.id,
        "role": account.role,
        "type": "access",
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


DROP = object()


def hs256(payload: dict[str, Any], secret: str | bytes = JWT_SECRET, **header: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=header or None)


def unsigned(payload: dict[str, Any], alg: str = "none", signature: str = "") -> str:
    return f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(payload)}.{signature}"


def hmac_by_hand(
    header: dict[str, Any], payload: dict[str, Any], key: bytes, digest: str = "sha256"
) -> str:
    """An HS token with any key (pyjwt refuses a PEM public key as an HMAC secret, and a
    short key for HS384/HS512)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    mac = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(mac)}"


def tampered(token: str, **changes: Any) -> str:
    """The server's own token with its payload edited and the original signature kept."""
    header, payload, signature = token.split(".")
    body = orjson.loads(unb64url(payload))
    body.update(changes)
    return f"{header}.{b64url(body)}.{signature}"


class RsaKey:
    """A throwaway RSA key: RS256 signatures (PKCS#1 v1.5) and the public key as PEM."""

    _SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

    def __init__(self, bits: int = 2048, seed: int = 7) -> None:
        rng = random.Random(seed)
        e = 65537
        while True:
            p, q = _prime(bits // 2, rng), _prime(bits // 2, rng)
            phi = (p - 1) * (q - 1)
            if p != q and phi % e:
                break
        self.n, self.e, self.d = p * q, e, pow(e, -1, phi)
        self.size = (self.n.bit_length() + 7) // 8

    def rs256(self, payload: dict[str, Any], **header: Any) -> str:
        signing_input = f"{b64url({'alg': 'RS256', 'typ': 'JWT', **header})}.{b64url(payload)}"
        digest = self._SHA256_DIGEST_INFO + hashlib.sha256(signing_input.encode()).digest()
        padded = b"\x00\x01" + b"\xff" * (self.size - len(digest) - 3) + b"\x00" + digest
        signature = pow(int.from_bytes(padded, "big"), self.d, self.n).to_bytes(self.size, "big")
        return f"{signing_input}.{b64url(signature)}"

    def public_pem(self) -> bytes:
        rsa_public_key = _der(0x30, _der_int(self.n) + _der_int(self.e))
        algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
        spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public_key))
        body = base64.encodebytes(spki).replace(b"\n", b"")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _der(0x02, raw)


def _prime(bits: int, rng: random.Random) -> int:
    while True:
        candidate = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _probably_prime(candidate, rng):
            return candidate


def _probably_prime(n: int, rng: random.Random, rounds: int = 24) -> bool:
    for small in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % small == 0:
            return n == small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


RSA = RsaKey()

# name → forged access token for `victim` (`other` is a second real account).
ACCESS_ATTACKS: dict[str, Callable[[Account, Account], str]] = {
    "alg-none": lambda v, o: unsigned(claims(v)),
    "alg-None": lambda v, o: unsigned(claims(v), alg="None"),
    "alg-NONE": lambda v, o: unsigned(claims(v), alg="NONE"),
    "alg-none-keeping-a-real-signature": lambda v, o: unsigned(
        claims(v), signature=v.token.split(".")[2]
    ),
    "rs256-attacker-key": lambda v, o: RSA.rs256(claims(v)),
    "hs256-public-key-as-secret": lambda v, o: hmac_by_hand(
        {"alg": "HS256", "typ": "JWT"}, claims(v), RSA.public_pem()
    ),
    "hs256-wrong-key": lambda v, o: hs256(claims(v), "another-secret-that-is-also-long-enough!!"),
    "hs256-empty-key-with-kid": lambda v, o: hmac_by_hand(
        {"alg": "HS256", "typ": "JWT", "kid": "../../../dev/null"}, claims(v), b""
    ),
    "hs256-embedded-jwk": lambda v, o: hmac_by_hand(
        {"alg": "HS256", "typ": "JWT", "jwk": {"kty": "oct", "k": b64url(b"attacker")}},
        claims(v),
        b"attacker",
    ),
    "hs512-right-key": lambda v, o: hmac_by_hand(
        {"alg": "HS512", "typ": "JWT"}, claims(v), JWT_SECRET.encode(), "sha512"
    ),
    "hs384-right-key": lambda v, o: hmac_by_hand(
        {"alg": "HS384", "typ": "JWT"}, claims(v), JWT_SECRET.encode(), "sha384"
    ),
    "hs256-header-claiming-hs512": lambda v, o: hmac_by_hand(
        {"alg": "HS512", "typ": "JWT"}, claims(v), JWT_SECRET.encode()
    ),
    "expired": lambda v, o: hs256(claims(v, iat=int(time.time()) - 120, exp=int(time.time()) - 60)),
    "refresh-token-as-access": lambda v, o: v.refresh_token,
    "tampered-role-admin": lambda v, o: tampered(v.token, role="admin"),
    "tampered-sub-other-user": lambda v, o: tampered(v.token, sub=o.id),
    "tampered-exp-extended": lambda v, o: tampered(v.token, exp=int(time.time()) + 10**8),
    "tampered-type-refresh-to-access": lambda v, o: tampered(v.refresh_token, type="access"),
    "signature-stripped": lambda v, o: v.token.rsplit(".", 1)[0] + ".",
    "signature-of-another-token": lambda v, o: v.token.rsplit(".", 1)[0] + "." + o.token.split(".")[2],
    "no-exp": lambda v, o: hs256(claims(v, exp=DROP)),
    "no-type": lambda v, o: hs256(claims(v, type=DROP)),
    "no-sub": lambda v, o: hs256(claims(v, sub=DROP)),
    "sub-not-an-id": lambda v, o: hs256(claims(v, sub="1' OR '1'='1")),
    "unknown-role": lambda v, o: hs256(claims(v, role="root")),
    "unknown-type": lambda v, o: hs256(claims(v, type="session")),
    "two-parts": lambda v, o: ".".join(v.token.split(".")[:2]),
    "four-parts": lambda v, o: v.token + ".e30",
    "garbage": lambda v, o: "not.a.token",
    "over-4-kib": lambda v, o: hs256(claims(v, pad="x" * 5000)),
}


# ---- how a token is tried ---------------------------------------------------------------


async def close_code(client: Client, timeout: float = 5.0) -> int | None:
    """Reads until the server closes; the close code (None: closed without one)."""
    try:
        while True:
            raw = await asyncio.wait_for(client.ws.recv(), timeout)
            frame = orjson.loads(raw)
            assert frame.get("type") != "ready", f"the socket was let in: {frame}"
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def ws_by_frame(service: Service, token: str) -> int | None:
    client = await service.connect(None)
    await client.send({"type": "auth", "token": token})
    return await close_code(client)


async def ws_by_header(service: Service, token: str) -> int | None:
    client = await service.connect(None, additional_headers={"Authorization": f"Bearer {token}"})
    return await close_code(client)


def assert_error(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.json()["error"]["code"] == code, reply.text


# ---- forged and misused tokens -------------------------------------------------------------


async def test_a_genuine_token_is_accepted_everywhere(shared: Service) -> None:
    """The control for the attacks below: each one differs from this only by its forgery."""
    user = await shared.user()
    for token in (user.token, hs256(claims(user))):
        by_frame = await shared.connect(None)
        await by_frame.send({"type": "auth", "token": token})
        assert (await by_frame.next())["type"] == "ready"
        by_header = await shared.connect(None, additional_headers={"Authorization": f"Bearer {token}"})
        assert (await by_header.next())["type"] == "ready"
        reply = await shared.http.get(ME, headers={"authorization": f"Bearer {token}"})
        assert reply.status_code == 200 and reply.json()["user"]["id"] == user.id


@pytest.mark.parametrize("attack", list(ACCESS_ATTACKS))
async def test_forged_access_token_is_refused(
    shared: Service, accounts: tuple[Account, Account], attack: str
) -> None:
    victim, other = accounts
    token = ACCESS_ATTACKS[attack](victim, other)
    assert await ws_by_frame(shared, token) == 4401
    assert await ws_by_header(shared, token) == 4401
    reply = await shared.http.get(ME, headers={"authorization": f"Bearer {token}"})
    assert_error(reply, 401, "invalid_token")


@pytest.mark.parametrize(
    "attack", ["alg-none", "rs256-attacker-key", "hs256-public-key-as-secret", "tampered-role-admin"]
)
async def test_forged_admin_claim_opens_no_admin_path(
    shared: Service, accounts: tuple[Account, Account], attack: str
) -> None:
    """A user's token rewritten to say role=admin (or forged outright) is not an admin's."""
    victim, other = accounts
    token = ACCESS_ATTACKS[attack](victim, other)
    if attack != "tampered-role-admin":
        header, payload, signature = token.split(".")
        token = tampered(token, role="admin") if signature else unsigned(claims(victim, role="admin"))
    headers = {"authorization": f"Bearer {token}"}
    for method, path in (("GET", STATS), ("GET", "/api/v1/admin/flow")):
        assert_error(await shared.http.request(method, path, headers=headers), 401, "invalid_token")
    reply = await shared.http.put("/api/v1/admin/flow", json={"top_flow": "off"}, headers=headers)
    assert_error(reply, 401, "invalid_token")
    flow = await shared.fetch("SELECT top_flow FROM flow_settings")
    assert [r["top_flow"] for r in flow] == ["on"]
    assert await ws_by_frame(shared, token) == 4401


REFRESH_ATTACKS: dict[str, Callable[[Account, Account], str]] = {
    "access-token-as-refresh": lambda v, o: v.token,
    "alg-none": lambda v, o: unsigned(claims(v, type="refresh")),
    "rs256-attacker-key": lambda v, o: RSA.rs256(claims(v, type="refresh")),
    "hs256-wrong-key": lambda v, o: hs256(
        claims(v, type="refresh"), "another-secret-that-is-also-long-enough!!"
    ),
    "tampered-sub-other-user": lambda v, o: tampered(v.refresh_token, sub=o.id),
    "tampered-type-access-to-refresh": lambda v, o: tampered(v.token, type="refresh"),
    "expired-with-a-real-jti": lambda v, o: hs256(
        {
            **orjson.loads(unb64url(v.refresh_token.split(".")[1])),
            "exp": int(time.time()) - 60,
        }
    ),
    "signed-but-never-issued": lambda v, o: hs256(claims(v, type="refresh")),
    "garbage": lambda v, o: "not.a.token",
}


@pytest.mark.parametrize("attack", list(REFRESH_ATTACKS))
async def test_forged_refresh_token_is_refused(
    shared: Service, accounts: tuple[Account, Account], attack: str
) -> None:
    victim, other = accounts
    body = await shared.login(victim.email, PASSWORD)  # a refresh token of this test's own
    victim = replace(victim, token=body["access_token"], refresh_token=body["refresh_token"])
    token = REFRESH_ATTACKS[attack](victim, other)
    reply = await shared.http.post(REFRESH, json={"refresh_token": token})
    assert_error(reply, 401, "invalid_token")
    # The victim's real refresh token was not spent by the attempt.
    reply = await shared.http.post(REFRESH, json={"refresh_token": victim.refresh_token})
    assert reply.status_code == 200 and reply.json()["user"]["id"] == victim.id


async def test_refresh_body_of_the_wrong_shape_is_refused(shared: Service) -> None:
    user = await shared.user()
    bodies: list[dict[str, Any]] = [
        {}, {"refresh_token": None}, {"refresh_token": 12}, {"refresh_token": [user.refresh_token]},
        {"refresh_token": ""}, {"token": user.refresh_token},
    ]
    for body in bodies:
        reply = await shared.http.post(REFRESH, json=body)
        assert 400 <= reply.status_code < 500, (body, reply.status_code, reply.text)
        assert reply.json()["error"]["code"] in ("invalid_token", "invalid_input"), (body, reply.text)


async def test_deleted_account_token_is_refused(shared: Service) -> None:
    user = await shared.user()
    await shared.fetch("DELETE FROM users WHERE id = $1", user.id)
    assert await ws_by_frame(shared, user.token) == 4403
    assert await ws_by_header(shared, user.token) == 4403
    reply = await shared.http.get(ME, headers={"authorization": f"Bearer {user.token}"})
    assert_error(reply, 401, "invalid_token")
    reply = await shared.http.post(REFRESH, json={"refresh_token": user.refresh_token})
    assert_error(reply, 401, "invalid_token")


async def test_deleted_account_cannot_come_back(shared: Service) -> None:
    """An account deleted while its socket is open cannot reconnect with its token."""
    user = await shared.user()
    page = await shared.connect(user)
    await shared.fetch("DELETE FROM users WHERE id = $1", user.id)
    await page.close()
    assert await ws_by_frame(shared, user.token) == 4403
    assert await shared.fetch("SELECT id FROM requests WHERE user_id = $1", user.id) == []


async def test_a_frame_from_a_deleted_accounts_open_socket_is_answered(shared: Service) -> None:
    """The account is deleted while its socket is open: the next request gets an error
    (or the socket is closed, 4403) and leaves no row behind."""
    user = await shared.user()
    page = await shared.connect(user)
    await shared.fetch("DELETE FROM users WHERE id = $1", user.id)
    try:
        reply = await page.call({"type": "request", "kind": "chat", "astrologer_id": None}, timeout=5.0)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 4403, exc
    else:
        assert reply["type"] == "error", reply
    assert await shared.fetch("SELECT id FROM requests WHERE user_id = $1", user.id) == []


# ---- Origin ----------------------------------------------------------------------------------


async def origin_refused(service: Service, origin: str) -> None:
    """Refused before the handshake completes (HTTP 403), or closed 1008 before `ready`."""
    user = await service.user()
    try:
        ws = await connect(service.ws_url, origin=origin)  # type: ignore[arg-type]
    except InvalidStatus as exc:
        assert exc.response.status_code == 403, (origin, exc.response.status_code)
        return
    client = Client(ws, None)
    service.clients.append(client)
    try:
        await client.send({"type": "auth", "token": user.token})
    except ConnectionClosed:
        pass
    assert await close_code(client) == 1008, origin


async def origin_accepted(service: Service, origin: str | None) -> None:
    user = await service.user()
    extra: dict[str, Any] = {"origin": origin} if origin is not None else {}
    client = await service.connect(user, **extra)
    await client.send({"type": "ping"})
    assert (await client.wait_for("pong"))["type"] == "pong"


async def test_origin_outside_the_allowed_list_is_refused(service_factory: Factory) -> None:
    service = await service_factory(allowed_origins=("https://good.example",))
    for origin in (
        "https://evil.example",
        "http://good.example",  # another scheme is another origin
        "https://good.example:8443",  # and so is another port
        "https://good.example.evil.example",
        "https://evilgood.example",
        "https://evil.example/https://good.example",
        "null",
    ):
        await origin_refused(service, origin)
    await origin_accepted(service, "https://good.example")
    await origin_accepted(service, None)  # not a browser


async def test_without_allowed_origins_only_the_same_origin_is_accepted(service: Service) -> None:
    port = int(service.base_url.rsplit(":", 1)[1])
    await origin_accepted(service, f"http://127.0.0.1:{port}")
    await origin_accepted(service, None)
    for origin in (
        "http://evil.example",
        f"http://127.0.0.1:{port + 1}",
        f"http://localhost:{port}",  # another host name is another origin
        f"http://127.0.0.1:{port}.evil.example",
        "null",
    ):
        await origin_refused(service, origin)


# ---- login brute force -------------------------------------------------------------------------


async def login(service: Service, email: str, password: str) -> httpx.Response:
    return await service.http.post(LOGIN, json={"email": email, "password": password})


async def test_login_brute_force_is_throttled_per_email(service_factory: Factory) -> None:
    service = await service_factory(login_fails=3)
    victim, bystander = await service.user(), await service.user()
    for guess in ("123456", "password", "qwerty12"):
        assert_error(await login(service, victim.email, guess), 401, "invalid_credentials")
    # Past the limit even the right password is refused, whatever the spelling of the email.
    for email in (victim.email, victim.email.upper(), f"  {victim.email} "):
        assert_error(await login(service, email, PASSWORD), 429, "too_many_attempts")
    assert_error(await login(service, victim.email, "letmein1"), 429, "too_many_attempts")
    # Another email is not affected.
    assert_error(await login(service, bystander.email, "wrong-one"), 401, "invalid_credentials")
    reply = await login(service, bystander.email, PASSWORD)
    assert reply.status_code == 200 and reply.json()["user"]["id"] == bystander.id
    # The victim's existing tokens still work: the throttle guards logins, nothing else.
    reply = await service.http.get(ME, headers={"authorization": f"Bearer {victim.token}"})
    assert reply.status_code == 200


async def test_login_brute_force_on_unknown_emails_is_throttled_too(service_factory: Factory) -> None:
    """Guessing at an email that does not exist looks the same as at one that does."""
    service = await service_factory(login_fails=2)
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    for _ in range(2):
        assert_error(await login(service, nobody, PASSWORD), 401, "invalid_credentials")
    assert_error(await login(service, nobody, PASSWORD), 429, "too_many_attempts")


async def test_login_spraying_from_one_address_is_throttled(service_factory: Factory) -> None:
    """One address failing across many emails: 10x the per-email limit (SPEC: 5 → 50)."""
    service = await service_factory(login_fails=2)
    fresh = await service.user()
    for i in range(2 * 10):
        email = f"spray-{i}-{uuid.uuid4().hex[:6]}@example.test"
        assert_error(await login(service, email, "guess-guess"), 401, "invalid_credentials")
    assert_error(await login(service, fresh.email, PASSWORD), 429, "too_many_attempts")
