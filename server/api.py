"""The HTTP API (SPEC §3): auth, the astrologer list, admin, health."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncpg
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from matcher.keys import Keys
from matcher.stats import admin_stats
from matcher.store import Store
from server import auth, db, metrics
from server.auth import Claims, LoginThrottle, Role, Tokens, TokenType
from server.errors import (
    AstroqError,
    BadJson,
    EmailTaken,
    Forbidden,
    InvalidCredentials,
    InvalidInput,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)

MAX_BODY_BYTES = 64 * 1024
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
MAX_NAME_CHARS = 100
MAX_PASSWORD_CHARS = 1024


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: AstroqError) -> Response:
    metrics.ERRORS.labels(error.code).inc()
    return ORJSONResponse(error.body(), status_code=error.status)


@dataclass
class Api:
    pool: asyncpg.Pool
    redis: Redis
    keys: Keys
    store: Store
    tokens: Tokens
    throttle: LoginThrottle

    # ---- plumbing ------------------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise PayloadTooLarge()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadJson() from None
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        return body

    def claims(self, request: Request, *roles: Role) -> Claims:
        header = request.headers.get("authorization", "")
        if header[:7].lower() != "bearer ":
            raise Unauthorized()
        claims = self.tokens.decode(header[7:].strip(), TokenType.ACCESS)
        if roles and claims.role not in roles:
            raise Forbidden()
        return claims

    async def session_body(self, user: dict[str, Any]) -> dict[str, Any]:
        access = self.tokens.issue(user["id"], user["role"], TokenType.ACCESS)
        refresh = self.tokens.issue(user["id"], user["role"], TokenType.REFRESH)
        async with self.pool.acquire() as conn:
            await db.insert_refresh(conn, refresh.jti, user["id"], refresh.expires_at)
        return {
            "access_token": access.token,
            "refresh_token": refresh.token,
            "token_type": "bearer",
            "expires_in": int(self.tokens.access_ttl_s),
            "user": user,
        }

    async def live_status(self, astrologer_ids: list[str]) -> list[tuple[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for aid in astrologer_ids:
            pipe.hget(self.keys.astrologer(aid), "status")
            pipe.zcard(self.keys.direct_line(aid))
        replies = await pipe.execute()
        return [
            ((replies[i] or b"offline").decode(), int(replies[i + 1]))
            for i in range(0, len(replies), 2)
        ]

    # ---- auth ----------------------------------------------------------------------
    async def register(self, request: Request) -> Response:
        body = await self.body(request)
        email = _email(body.get("email"))
        password = _password(body.get("password"))
        name = _name(body.get("name"))
        password_hash = await auth.hash_password(password)
        async with self.pool.acquire() as conn:
            user = await db.insert_user(
                conn, str(uuid.uuid4()), email, name, Role.USER.value, password_hash
            )
        if user is None:
            raise EmailTaken()
        return ORJSONResponse({"user": user}, status_code=201)

    async def login(self, request: Request) -> Response:
        body = await self.body(request)
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise InvalidInput("email and password are required")
        email = email.strip().lower()
        address = request.client.host if request.client else "unknown"
        await self.throttle.check(email, address)
        async with self.pool.acquire() as conn:
            row = await db.user_by_email(conn, email)
        ok = await auth.verify_password(row["password_hash"] if row else None, password[:MAX_PASSWORD_CHARS])
        if row is None or not ok:
            await self.throttle.failed(email, address)
            raise InvalidCredentials()
        await self.throttle.succeeded(email)
        return ORJSONResponse(await self.session_body(db.user_dict(row)))

    async def refresh(self, request: Request) -> Response:
        body = await self.body(request)
        claims = self.tokens.decode(body.get("refresh_token"), TokenType.REFRESH)
        async with self.pool.acquire() as conn:
            user_id = await db.use_refresh(conn, claims.jti)  # a reused token is refused
            user = await db.user_by_id(conn, user_id) if user_id else None
        if user is None:
            raise InvalidToken()
        return ORJSONResponse(await self.session_body(user))

    async def me(self, request: Request) -> Response:
        claims = self.claims(request)
        async with self.pool.acquire() as conn:
            user = await db.user_by_id(conn, claims.user_id)
            astrologer = None
            if user and user["role"] == Role.ASTROLOGER:
                astrologer = await db.astrologer_by_id(conn, claims.user_id)
        if user is None:
            raise InvalidToken("the account no longer exists")
        body: dict[str, Any] = {"user": user}
        if astrologer is not None:
            astrologer["status"] = (await self.live_status([astrologer["id"]]))[0][0]
            body["astrologer"] = astrologer
        return ORJSONResponse(body)

    # ---- astrologers ------------------------------------------------------------------
    async def astrologers(self, request: Request) -> Response:
        self.claims(request)
        async with self.pool.acquire() as conn:
            rows = await db.all_astrologers(conn)
        live = await self.live_status([r["id"] for r in rows])
        return ORJSONResponse(
            {
                "astrologers": [
                    {
                        "id": r["id"],
                        "name": r["name"],
                        "is_top": r["is_top"],
                        "status": status,
                        "languages": r["languages"],
                        "waiting": waiting,
                    }
                    for r, (status, waiting) in zip(rows, live)
                ]
            }
        )

    async def create_astrologer(self, request: Request) -> Response:
        admin = self.claims(request, Role.ADMIN)
        body = await self.body(request)
        email = _email(body.get("email"))
        password = _password(body.get("password"))
        fields = _astrologer_fields(body, partial=False)
        fields["name"] = _name(body.get("name"))
        astrologer_id = str(uuid.uuid4())
        password_hash = await auth.hash_password(password)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                user = await db.insert_user(
                    conn, astrologer_id, email, fields["name"], Role.ASTROLOGER.value, password_hash
                )
                if user is None:
                    raise EmailTaken()
                await conn.execute(
                    "INSERT INTO astrologers (id, is_top, weight, capacity, flow_enabled, languages)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    astrologer_id,
                    fields["is_top"],
                    fields["weight"],
                    fields["capacity"],
                    fields["flow_enabled"],
                    fields["languages"],
                )
                astrologer = await db.astrologer_by_id(conn, astrologer_id)
                assert astrologer is not None
                await db.audit(
                    conn, admin.user_id, "astrologer.create", astrologer_id, None, astrologer
                )
        await self._sync_astrologer(astrologer)
        return ORJSONResponse({"astrologer": astrologer}, status_code=201)

    async def patch_astrologer(self, request: Request) -> Response:
        admin = self.claims(request, Role.ADMIN)
        astrologer_id = _path_id(request)
        body = await self.body(request)
        fields = _astrologer_fields(body, partial=True)
        if "name" in body:
            fields["name"] = _name(body["name"])
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                before = await db.astrologer_by_id(conn, astrologer_id)
                if before is None:
                    raise NotFound("no such astrologer")
                if "name" in fields:
                    await conn.execute(
                        "UPDATE users SET name = $2 WHERE id = $1", astrologer_id, fields.pop("name")
                    )
                for column, value in fields.items():
                    # Column names come from the fixed list in _astrologer_fields, never input.
                    await conn.execute(
                        f"UPDATE astrologers SET {_COLUMNS[column]} = $2, updated_at = now()"
                        " WHERE id = $1",
                        astrologer_id,
                        value,
                    )
                after = await db.astrologer_by_id(conn, astrologer_id)
                assert after is not None
                await db.audit(conn, admin.user_id, "astrologer.update", astrologer_id, before, after)
        await self._sync_astrologer(after)
        after["status"] = (await self.live_status([astrologer_id]))[0][0]
        return ORJSONResponse({"astrologer": after})

    async def _sync_astrologer(self, astrologer: dict[str, Any]) -> None:
        await self.store.upsert_astrologer(
            astrologer["id"],
            astrologer["name"],
            astrologer["weight"],
            astrologer["capacity"],
            astrologer["is_top"],
            astrologer["flow_enabled"],
        )

    # ---- flow and stats ------------------------------------------------------------------
    async def get_flow(self, request: Request) -> Response:
        self.claims(request, Role.ADMIN)
        async with self.pool.acquire() as conn:
            return ORJSONResponse(await db.flow_settings(conn))

    async def put_flow(self, request: Request) -> Response:
        admin = self.claims(request, Role.ADMIN)
        body = await self.body(request)
        top_flow = body.get("top_flow")
        if top_flow not in ("off", "on", "boost"):
            raise InvalidInput("top_flow must be off, on or boost")
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                before = await conn.fetchrow(
                    "SELECT top_flow, boost FROM flow_settings WHERE id = 1 FOR UPDATE"
                )
                boost = before["boost"]
                if body.get("boost") is not None:
                    boost = _number(body["boost"], "boost", minimum_exclusive=0)
                await conn.execute(
                    "UPDATE flow_settings SET top_flow = $1, boost = $2, updated_at = now()"
                    " WHERE id = 1",
                    top_flow,
                    boost,
                )
                after = {"top_flow": top_flow, "boost": boost}
                await db.audit(conn, admin.user_id, "flow.update", None, dict(before), after)
        await self.store.set_flow(top_flow, boost)
        return ORJSONResponse(after)

    async def stats(self, request: Request) -> Response:
        self.claims(request, Role.ADMIN)
        return ORJSONResponse(await admin_stats(self.store, self.pool))

    # ---- health ------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return ORJSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = []
        try:
            async with asyncio.timeout(1):  # a paused Redis answers nothing: 503, not a hang
                await self.redis.ping()
        except Exception:
            problems.append("redis")
        try:
            async with self.pool.acquire(timeout=1) as conn:
                await conn.fetchval("SELECT 1", timeout=1)
        except Exception:
            problems.append("postgresql")
        if problems:
            return ORJSONResponse(
                {"status": "unavailable", "failing": problems}, status_code=503
            )
        return ORJSONResponse({"status": "ok"})


def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turns typed errors into the SPEC's error body."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except AstroqError as error:
            return error_response(error)

    return endpoint


# ---- validation ---------------------------------------------------------------------------

_COLUMNS = {
    "is_top": "is_top",
    "weight": "weight",
    "capacity": "capacity",
    "flow_enabled": "flow_enabled",
    "languages": "languages",
}


def _email(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 254 or not EMAIL.match(value.strip()):
        raise InvalidInput("email must look like local@domain")
    return value.strip().lower()


def _password(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 8 or len(value) > MAX_PASSWORD_CHARS:
        raise InvalidInput("password must be 8 to 1024 characters")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidInput("name must be 1 to 100 characters")
    return value.strip()


def _number(value: Any, name: str, minimum_exclusive: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number")
    if not math.isfinite(value) or value <= minimum_exclusive or value > 1_000_000:
        raise InvalidInput(f"{name} must be above {minimum_exclusive:g}")
    return float(value)


def _astrologer_fields(body: dict[str, Any], partial: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    defaults = {"is_top": False, "weight": 1.0, "capacity": 1, "flow_enabled": True, "languages": []}
    for name, default in defaults.items():
        if name not in body or (body[name] is None and not partial):
            if not partial:
                fields[name] = default
            continue
        value = body[name]
        if name in ("is_top", "flow_enabled"):
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false")
        elif name == "weight":
            value = _number(value, "weight", minimum_exclusive=0)
        elif name == "capacity":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
                raise InvalidInput("capacity must be a whole number from 1")
        elif name == "languages":
            if not isinstance(value, list) or len(value) > 20 or not all(
                isinstance(v, str) and 0 < len(v) <= 32 for v in value
            ):
                raise InvalidInput("languages must be a list of short strings")
        fields[name] = value
    unknown = set(body) - set(defaults) - ({"name"} if partial else {"name", "email", "password"})
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]}")
    if partial and not fields and "name" not in body:
        raise InvalidInput("nothing to change")
    return fields


def _path_id(request: Request) -> str:
    try:
        return str(uuid.UUID(request.path_params["id"]))
    except ValueError:
        raise NotFound("no such astrologer") from None
