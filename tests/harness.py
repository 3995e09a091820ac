"""A live astroq for tests: the real app under uvicorn on a free port, real Redis
and PostgreSQL, isolated per service (its own Redis key prefix and its own
PostgreSQL schema), and small clients that speak the SPEC's protocol.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import uvicorn
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from server.app import create_app
from server.auth import Tokens, TokenType, hash_password
from server.cli import uvicorn_config
from server.settings import Settings

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!!"
ADMIN_EMAIL = "root@astroq.test"
ADMIN_PASSWORD = "admin-password"
PASSWORD = "password123"

# Short timings so tests run fast; a test may override any of them.
TEST_TIMINGS: dict[str, Any] = {
    "offer_timeout_s": 3.0,
    "reconnect_grace_s": 2.0,
    "matcher_lease_s": 1.0,
    "max_wait_s": 1800.0,  # the SPEC default: every request has a deadline far ahead
    "ws_rate": 200.0,
    "ws_burst": 400.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Account:
    id: str
    email: str
    password: str
    name: str
    role: str
    token: str
    refresh_token: str


class Client:
    """One WebSocket connection; keeps every frame it received, in order."""

    def __init__(self, ws: ClientConnection, account: Account | None) -> None:
        self.ws = ws
        self.account = account
        self.frames: list[dict[str, Any]] = []
        self._cursor = 0
        self._refs = 0

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def _pull(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = orjson.loads(raw)
        self.frames.append(frame)
        return frame

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame not yet looked at, in arrival order."""
        if self._cursor < len(self.frames):
            frame = self.frames[self._cursor]
        else:
            frame = await self._pull(timeout)
        self._cursor += 1
        return frame

    async def wait_for(self, frame_type: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Skips ahead to the next frame of this type (and field values)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next(max(0.01, deadline - loop.time()))
            if frame.get("type") == frame_type and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def call(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Sends a frame with a fresh ref; returns its ack or error (other frames stay queued)."""
        self._refs += 1
        ref = f"r{self._refs}"
        await self.send({**frame, "ref": ref})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = len(self.frames)
        while True:
            for frame_seen in self.frames[index:]:
                if frame_seen.get("ref") == ref and frame_seen.get("type") in ("ack", "error"):
                    return frame_seen
            index = len(self.frames)
            await self._pull(max(0.01, deadline - loop.time()))

    async def ok(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        reply = await self.call(frame, timeout)
        assert reply["type"] == "ack", reply
        return reply

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Every frame that arrives within `seconds`."""
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                got.append(await self._pull(left))
            except asyncio.TimeoutError:
                break
        self._cursor = len(self.frames)
        return got

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Service:
    settings: Settings
    schema: str
    base_url: str
    ws_url: str
    redis: Redis
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    admin: Account | None = None
    clients: list[Client] = field(default_factory=list)
    _servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = field(default_factory=list)

    # ---- accounts ---------------------------------------------------------------
    async def login(self, email: str, password: str) -> dict[str, Any]:
        reply = await self.http.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def user(self, name: str | None = None) -> Account:
        name = name or f"user-{uuid.uuid4().hex[:6]}"
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.test"
        reply = await self.http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert reply.status_code == 201, reply.text
        body = await self.login(email, PASSWORD)
        return Account(
            body["user"]["id"], email, PASSWORD, name, "user", body["access_token"], body["refresh_token"]
        )

    async def many_users(self, count: int, prefix: str = "u") -> list[Account]:
        """Bulk accounts for load tests: rows written directly, tokens minted with the
        service's key (registering hundreds through the API would spend the test on
        deliberately slow password hashing)."""
        tokens = Tokens(JWT_SECRET, self.settings.access_ttl_s, self.settings.refresh_ttl_s)
        password_hash = await hash_password(PASSWORD)
        accounts = []
        rows = []
        for i in range(count):
            user_id = str(uuid.uuid4())
            name = f"{prefix}{i}"
            email = f"{name}-{user_id[:8]}@example.test"
            rows.append((user_id, email, name, "user", password_hash))
            access = tokens.issue(user_id, "user", TokenType.ACCESS).token
            accounts.append(Account(user_id, email, PASSWORD, name, "user", access, ""))
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5)",
                rows,
            )
        return accounts

    def admin_headers(self) -> dict[str, str]:
        assert self.admin is not None
        return {"authorization": f"Bearer {self.admin.token}"}

    async def astrologer(self, name: str | None = None, **fields: Any) -> Account:
        name = name or f"astro-{uuid.uuid4().hex[:6]}"
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.test"
        reply = await self.http.post(
            "/api/v1/admin/astrologers",
            json={"email": email, "password": PASSWORD, "name": name, **fields},
            headers=self.admin_headers(),
        )
        assert reply.status_code == 201, reply.text
        body = await self.login(email, PASSWORD)
        return Account(
            body["user"]["id"], email, PASSWORD, name, "astrologer", body["access_token"],
            body["refresh_token"],
        )

    async def patch(self, astrologer_id: str, **fields: Any) -> dict[str, Any]:
        reply = await self.http.patch(
            f"/api/v1/admin/astrologers/{astrologer_id}", json=fields, headers=self.admin_headers()
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def set_flow(self, top_flow: str, boost: float | None = None) -> None:
        body: dict[str, Any] = {"top_flow": top_flow}
        if boost is not None:
            body["boost"] = boost
        reply = await self.http.put("/api/v1/admin/flow", json=body, headers=self.admin_headers())
        assert reply.status_code == 200, reply.text

    # ---- sockets ------------------------------------------------------------------
    async def connect(
        self, account: Account | None, *, ready: bool = True, url: str | None = None, **kwargs: Any
    ) -> Client:
        ws = await connect(url or self.ws_url, max_size=None, **kwargs)
        client = Client(ws, account)
        self.clients.append(client)
        if account is not None:
            await client.send({"type": "auth", "token": account.token})
            if ready:
                frame = await client.next()
                assert frame["type"] == "ready", frame
        return client

    async def online(self, account: Account) -> Client:
        client = await self.connect(account)
        await client.ok({"type": "status", "status": "online"})
        return client

    # ---- more gateways -------------------------------------------------------------
    async def start_gateway(self, *, with_matcher: bool = False) -> str:
        """Another gateway process-equivalent (its own app, pools and pub/sub) on a new port."""
        port = free_port()
        app = create_app(self.settings, with_matcher=with_matcher, schema=self.schema)
        server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, timeout_graceful_shutdown=2))
        task = asyncio.create_task(server.serve())
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    async def stop_gateway(self, index: int) -> None:
        server, task = self._servers[index]
        server.should_exit = True
        await task

    async def close(self) -> None:
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:
                pass
        for server, task in self._servers:
            server.should_exit = True
        try:
            await asyncio.wait_for(
                asyncio.gather(*(task for _, task in self._servers), return_exceptions=True), 10
            )
        finally:
            await self.http.aclose()

    # ---- looking at the record -------------------------------------------------------
    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def eventually(self, sql: str, expected: Any, *args: Any, timeout: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            async with self.pool.acquire() as conn:
                value = await conn.fetchval(sql, *args)
            if value == expected or loop.time() > deadline:
                assert value == expected, (sql, value, expected)
                return value
            await asyncio.sleep(0.05)


async def start_service(database_url: str, redis_url: str, **overrides: Any) -> Service:
    with_matcher = overrides.pop("with_matcher", True)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    values = {**TEST_TIMINGS, **overrides}
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        metrics_port=0,
        redis_prefix=prefix,
        **values,
    )
    redis = Redis.from_url(redis_url)
    from server import db

    pool = await db.create_pool(database_url, schema=schema, min_size=1, max_size=5)
    await db.migrate(pool, schema=schema)
    port = free_port()
    app = create_app(settings, with_matcher=with_matcher, schema=schema)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    service = Service(
        settings,
        schema,
        base_url,
        f"ws://127.0.0.1:{port}/ws",
        redis,
        pool,
        httpx.AsyncClient(base_url=base_url, timeout=10),
    )
    service._servers.append((server, task))
    body = await service.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    service.admin = Account(
        body["user"]["id"], ADMIN_EMAIL, ADMIN_PASSWORD, "admin", "admin", body["access_token"],
        body["refresh_token"],
    )
    return service


async def stop_service(service: Service) -> None:
    await service.close()
    async for key in service.redis.scan_iter(match=f"{service.settings.redis_prefix}:*", count=1000):
        await service.redis.delete(key)
    async with service.pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{service.schema}" CASCADE')
    await service.pool.close()
    await service.redis.aclose()
