"""PostgreSQL and Redis for a bench run: a fresh database and key prefix per service.

Where the servers come from, in order: `--database-url`/`--redis-url`, then
ASTROQ_TEST_DATABASE_URL/ASTROQ_TEST_REDIS_URL, then servers answering on the
usual local ports, and on a fresh machine embedded ones (server/embedded.py)
in a temporary directory. Whatever the source, each service under test gets
its own database (`CREATE DATABASE bench_<random>`, dropped afterwards) and its
own Redis key prefix (deleted afterwards), so the run never touches anyone
else's data and one measurement never inherits another's state.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Stores:
    """One service's stores: its own database (may be none) and its own key prefix."""

    database_url: str
    redis_url: str
    prefix: str
    _admin_url: str = ""
    _database: str = ""

    def close(self) -> None:
        asyncio.run(self._drop())

    async def _drop(self) -> None:
        redis = Redis.from_url(self.redis_url)
        try:
            batch: list[Any] = []
            async for key in redis.scan_iter(match=f"{self.prefix}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    await redis.delete(*batch)
                    batch.clear()
            if batch:
                await redis.delete(*batch)
        finally:
            await redis.aclose()
        if self._database:
            conn = await asyncpg.connect(self._admin_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
            finally:
                await conn.close()


@dataclass
class Servers:
    """The PostgreSQL and Redis servers of a run, and the stores it made on them."""

    admin_url: str  # any database on the server; new databases are made from it
    redis_url: str
    source: str  # where the servers came from, for the report
    _made: list[Stores] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def fresh(self) -> Stores:
        """A new empty database and a new Redis key prefix, both removed by close()."""
        name, url = asyncio.run(_create_database(self.admin_url))
        stores = Stores(url, self.redis_url, _new_prefix(), self.admin_url, name)
        self._made.append(stores)
        return stores

    def scratch(self) -> Stores:
        """A new Redis key prefix only, removed by close()."""
        stores = Stores("", self.redis_url, _new_prefix())
        self._made.append(stores)
        return stores

    def close(self) -> None:
        try:
            for stores in self._made:
                stores.close()
        finally:
            for cleanup in reversed(self._cleanups):
                cleanup()


def _new_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:10]}"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), 0.5):
            return True
    except OSError:
        return False


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _create_database(admin_url: str) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, _with_database(admin_url, name)


def open_servers(database_url: str | None, redis_url: str | None, embedded: bool = False) -> Servers:
    """Finds servers: the given ones, CI's, the local ones, or embedded ones started here."""
    cleanups: list[Callable[[], None]] = []
    if not embedded:
        database_url = database_url or os.environ.get("ASTROQ_TEST_DATABASE_URL")
        redis_url = redis_url or os.environ.get("ASTROQ_TEST_REDIS_URL")
    source = "given"
    if not (database_url and redis_url):
        if not embedded and _answers(LOCAL_DATABASE_URL, 5432) and _answers(LOCAL_REDIS_URL, 6379):
            database_url, redis_url, source = LOCAL_DATABASE_URL, LOCAL_REDIS_URL, "local"
        else:
            from server.embedded import EmbeddedServers

            data_dir = Path(tempfile.mkdtemp(prefix="astroq-bench-"))
            servers = EmbeddedServers(data_dir, persistent=False)
            servers.start()
            cleanups.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
            cleanups.append(servers.stop)  # cleanups run last-in first-out
            database_url, redis_url, source = servers.database_url, servers.redis_url, "embedded"
    assert database_url and redis_url
    return Servers(admin_url=database_url, redis_url=redis_url, source=source, _cleanups=cleanups)
