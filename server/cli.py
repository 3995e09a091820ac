"""The `astroq` command (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from server.settings import ConfigError, Settings, load_settings
from server.wsprotocol import BatchingWebSocketProtocol

log = logging.getLogger("astroq")

MAX_FRAME_BYTES = 16 * 1024  # SPEC §4: a larger frame closes the socket with 1009


def uvicorn_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "loop": "uvloop",
        "http": "httptools",
        # uvicorn's sans-I/O protocol, able to write several frames at once.
        "ws": BatchingWebSocketProtocol,
        "ws_max_size": MAX_FRAME_BYTES,
        # Small JSON frames: compression costs memory per socket and saves little.
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, host=host, port=port, **options)


def bind(host: str, port: int, variable: str = "ASTROQ_PORT") -> socket.socket:
    """Binds the listening socket before anything starts, so a taken port fails fast and clean."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); set {variable}") from None
    sock.set_inheritable(True)
    return sock


def serve_until_signal(server: uvicorn.Server, sock: socket.socket) -> None:
    """Runs uvicorn until SIGINT or SIGTERM, then shuts down cleanly (no traceback, exit 0)."""
    import uvloop

    from server.gc_pauses import short_gc_pauses

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        async with short_gc_pauses():
            await server.serve(sockets=[sock])

    uvloop.run(go())
    if not server.started:
        raise SystemExit(1)  # start-up failed; the reason is in the log above


def _require_stores(settings: Settings, command: str) -> None:
    missing = [
        name
        for name, value in (
            ("ASTROQ_DATABASE_URL", settings.database_url),
            ("ASTROQ_REDIS_URL", settings.redis_url),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} must be set for `astroq {command}`")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import create_app

    _require_stores(settings, "serve")
    settings.require_secret()
    sock = bind(settings.host, settings.port)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings.host, settings.port))
    print(f"astroq gateway on http://{settings.host}:{settings.port}", flush=True)
    serve_until_signal(server, sock)
    return 0


async def run_matcher(settings: Settings) -> None:
    from matcher.aio import cancel_and_wait, log_failure
    from matcher.loop import Matcher
    from server.app import create_matcher_app, open_stores

    redis, pool = await open_stores(settings)
    matcher = Matcher(settings, redis, pool)
    tasks = [asyncio.create_task(matcher.run(), name="matcher")]
    tasks[0].add_done_callback(log_failure)
    metrics_server = None
    if settings.metrics_port:
        metrics_server = uvicorn.Server(
            uvicorn_config(create_matcher_app(matcher), settings.host, settings.metrics_port, lifespan="off")
        )
        sock = bind(settings.host, settings.metrics_port, "ASTROQ_METRICS_PORT")
        tasks.append(asyncio.create_task(metrics_server.serve(sockets=[sock]), name="matcher-metrics"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"astroq matcher {matcher.id} started", flush=True)
    await stop.wait()
    if metrics_server is not None:
        metrics_server.should_exit = True
    await cancel_and_wait(tasks)
    await matcher.release()  # a standby takes over at once instead of after the lease
    await pool.close()
    await redis.aclose()


def cmd_matcher(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    _require_stores(settings, "matcher")
    settings.require_secret()
    uvloop.run(run_matcher(settings))
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from server import db

    _require_stores(settings, "migrate")
    assert settings.database_url

    async def go() -> list[int]:
        pool = await db.create_pool(settings.database_url or "", min_size=1, max_size=2)
        try:
            return await db.migrate(pool)
        finally:
            await pool.close()

    applied = asyncio.run(go())
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def cmd_create_admin(settings: Settings, args: argparse.Namespace) -> int:
    from server import db, seed

    _require_stores(settings, "create-admin")
    password = settings.admin_password or getpass.getpass("password for the admin: ")
    if len(password) < 8:
        raise ConfigError("the admin password must be at least 8 characters")

    async def go() -> str:
        pool = await db.create_pool(settings.database_url or "", min_size=1, max_size=2)
        try:
            await db.migrate(pool)
            return await seed.ensure_admin(pool, args.email, password)
        finally:
            await pool.close()

    print(f"admin {args.email} ready (id {asyncio.run(go())})")
    return 0


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / "jwt_secret"
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import create_app
    from server.embedded import AlreadyRunning, EmbeddedServers
    from server.seed import DEMO_ACCOUNTS

    data_dir = settings.data_dir.resolve()
    sock = bind(settings.host, settings.port)
    embedded: EmbeddedServers | None = None
    if not (settings.database_url and settings.redis_url):
        embedded = EmbeddedServers(data_dir)
        try:
            embedded.start()
        except AlreadyRunning as exc:
            print(f"astroq dev: {exc}", file=sys.stderr)
            return 1
        settings = settings.with_overrides(
            database_url=settings.database_url or embedded.database_url,
            redis_url=settings.redis_url or embedded.redis_url,
        )
    if not settings.jwt_secret:
        settings = settings.with_overrides(jwt_secret=_dev_secret(data_dir))
    demo = settings.demo if settings.demo is not None else True
    try:
        app = create_app(settings, with_matcher=True, seed_demo=demo)
        server = uvicorn.Server(uvicorn_config(app, settings.host, settings.port))
        url = f"http://{settings.host}:{settings.port}"
        print(f"astroq dev is starting on {url}", flush=True)
        print(f"  user page {url}/   console {url}/console   admin {url}/admin", flush=True)
        if demo:
            print("  demo logins (password for all: %s):" % DEMO_ACCOUNTS[0].password)
            for account in DEMO_ACCOUNTS:
                print(f"    {account.role.value:<10} {account.email}")
        print("  Ctrl-C stops everything.", flush=True)
        serve_until_signal(server, sock)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astroq", description="Real-time consultation matching.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="everything on one machine (embedded PostgreSQL and Redis)")
    commands.add_parser("serve", help="the HTTP + WebSocket gateway")
    commands.add_parser("matcher", help="the matcher (one active, others on standby)")
    commands.add_parser("migrate", help="apply database migrations")
    admin = commands.add_parser("create-admin", help="create or reset an admin")
    admin.add_argument("email")
    commands.add_parser(
        "simulate", help="replay a synthetic day through the flow algorithm (see --help)"
    )
    return parser


COMMANDS = {
    "dev": cmd_dev,
    "serve": cmd_serve,
    "matcher": cmd_matcher,
    "migrate": cmd_migrate,
    "create-admin": cmd_create_admin,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        # The simulator has its own options (and --help); it needs no settings.
        from matcher import simulate

        result: int = simulate.main(argv[1:])
        return result
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"astroq: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
