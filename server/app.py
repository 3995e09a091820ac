"""The gateway application: routes, and a lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import AsyncIterator

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from matcher.aio import cancel_and_wait
from matcher.keys import Keys
from matcher.loop import Matcher
from matcher.store import Store
from server import db, metrics, seed
from server.api import Api, error_response, guarded
from server.errors import MethodNotAllowed, NotFound
from server.auth import LoginThrottle, Tokens
from server.settings import Settings
from server.ws import Gateway

log = logging.getLogger("astroq")

REDIS_CONNECTIONS = 64  # per process; never one per socket (LESSONS: Redis halves at 30k)


def web_dir() -> Path:
    beside = Path(__file__).resolve().parent.parent / "web"
    if beside.is_dir():
        return beside
    return Path(str(resources.files("web")))


@dataclass
class Services:
    settings: Settings
    redis: Redis
    pool: asyncpg.Pool
    api: Api
    gateway: Gateway
    matcher: Matcher | None


async def open_stores(settings: Settings, schema: str | None = None) -> tuple[Redis, asyncpg.Pool]:
    assert settings.database_url and settings.redis_url
    # A bounded pool that makes callers wait their turn (rather than fail) when every
    # connection is busy; and a deadline on every call, so a paused Redis turns
    # into an error, not a hang.
    pool_of_connections = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        timeout=10,
        health_check_interval=10,
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    redis = Redis(connection_pool=pool_of_connections)
    pool = await db.create_pool(settings.database_url, schema=schema)
    await db.migrate(pool, schema=schema)
    return redis, pool


def create_app(
    settings: Settings,
    *,
    with_matcher: bool = False,
    schema: str | None = None,
    seed_demo: bool = False,
) -> Starlette:
    """The gateway; with `with_matcher` (astroq dev, tests) a matcher runs in the same process."""
    tokens = Tokens(settings.require_secret(), settings.access_ttl_s, settings.refresh_ttl_s)
    holder: dict[str, Services] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis, pool = await open_stores(settings, schema)
        keys = Keys(settings.redis_prefix)
        store = Store(redis, keys)
        if settings.admin_email and settings.admin_password:
            await seed.ensure_admin(pool, settings.admin_email, settings.admin_password)
        if seed_demo:
            await seed.seed_demo(pool, store)
        api = Api(pool, redis, keys, store, tokens, LoginThrottle(redis, keys, settings.login_fails))
        gateway = Gateway(settings, redis, pool, tokens)
        await gateway.start()
        matcher = Matcher(settings, redis, pool) if with_matcher else None
        matcher_task = asyncio.create_task(matcher.run()) if matcher else None
        holder["services"] = Services(settings, redis, pool, api, gateway, matcher)
        app.state.services = holder["services"]
        try:
            yield
        finally:
            if matcher_task is not None and matcher is not None:
                await cancel_and_wait([matcher_task])
                await matcher.release()
            await gateway.stop()
            await pool.close()
            await redis.aclose()

    def route(name: str):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            handler = getattr(holder["services"].api, name)
            return await guarded(handler)(request)

        return endpoint

    async def websocket(ws: WebSocket) -> None:
        await holder["services"].gateway.serve(ws)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    pages = web_dir()

    def page(file_name: str):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            return FileResponse(pages / file_name, headers={"cache-control": "no-cache"})

        return endpoint

    routes = [
        Route("/api/v1/auth/register", route("register"), methods=["POST"]),
        Route("/api/v1/auth/login", route("login"), methods=["POST"]),
        Route("/api/v1/auth/refresh", route("refresh"), methods=["POST"]),
        Route("/api/v1/me", route("me"), methods=["GET"]),
        Route("/api/v1/astrologers", route("astrologers"), methods=["GET"]),
        Route("/api/v1/admin/astrologers", route("create_astrologer"), methods=["POST"]),
        Route("/api/v1/admin/astrologers/{id}", route("patch_astrologer"), methods=["PATCH"]),
        Route("/api/v1/admin/flow", route("get_flow"), methods=["GET"]),
        Route("/api/v1/admin/flow", route("put_flow"), methods=["PUT"]),
        Route("/api/v1/admin/stats", route("stats"), methods=["GET"]),
        Route("/healthz", route("healthz"), methods=["GET"]),
        Route("/readyz", route("readyz"), methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        WebSocketRoute("/ws", websocket),
        Route("/", page("index.html"), methods=["GET"]),
        Route("/console", page("console.html"), methods=["GET"]),
        Route("/admin", page("admin.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=pages, check_dir=False), name="static"),
    ]
    async def no_route(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        error = NotFound("no such path") if status == 404 else MethodNotAllowed()
        return error_response(error)

    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={404: no_route, 405: no_route}
    )


def create_matcher_app(matcher: Matcher) -> Starlette:
    """`astroq matcher`'s own /healthz and /metrics (SPEC §2)."""

    async def healthz(request: Request) -> Response:
        return Response(
            b'{"status":"ok","leader":%d}' % int(matcher.leader.is_set()),
            media_type="application/json",
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
