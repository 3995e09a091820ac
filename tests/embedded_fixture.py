"""PostgreSQL and Redis for the test session: given by CI, or started here once.

Set ASTROQ_TEST_DATABASE_URL and ASTROQ_TEST_REDIS_URL to test against servers
you run yourself; otherwise this process starts throwaway embedded servers on
first use and stops them (and deletes their files) when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from server.embedded import EmbeddedServers

DATABASE_URL_VAR = "ASTROQ_TEST_DATABASE_URL"
REDIS_URL_VAR = "ASTROQ_TEST_REDIS_URL"

_urls: tuple[str, str] | None = None


def test_servers() -> tuple[str, str]:
    """(database_url, redis_url) for this test process; the same on every call."""
    global _urls
    if _urls is None:
        _urls = _from_environment() or _start_embedded()
    return _urls


# A plain function named test_*: keep pytest from collecting it where imported.
test_servers.__test__ = False  # type: ignore[attr-defined]


def _from_environment() -> tuple[str, str] | None:
    database_url = os.environ.get(DATABASE_URL_VAR)
    redis_url = os.environ.get(REDIS_URL_VAR)
    if database_url and redis_url:
        return database_url, redis_url
    if database_url or redis_url:
        # Half a configuration is a mistake; silently testing against embedded
        # servers instead would hide it.
        missing = REDIS_URL_VAR if database_url else DATABASE_URL_VAR
        raise RuntimeError(f"{missing} must be set along with the other ASTROQ_TEST_* URL")
    return None


def _start_embedded() -> tuple[str, str]:
    data_dir = Path(tempfile.mkdtemp(prefix="astroq-test-"))
    servers = EmbeddedServers(data_dir, persistent=False)
    try:
        servers.start()
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise

    owner_pid = os.getpid()

    def cleanup() -> None:
        if os.getpid() != owner_pid:
            return  # a forked child exiting; the servers are its parent's
        servers.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    # Registered after start(), so it runs before the servers' own atexit hook
    # (atexit is last-in, first-out) and the directory goes once they are down.
    atexit.register(cleanup)
    return servers.database_url, servers.redis_url
