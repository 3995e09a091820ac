"""EmbeddedServers against the real binaries: start, lock, stop, restart, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.embedded import AlreadyRunning, EmbeddedServers

REPO_ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0

# Started in a child python that the test then kills with SIGKILL.
HOLD_SERVERS = """
import sys, time
from pathlib import Path
from server.embedded import EmbeddedServers
servers = EmbeddedServers(Path(sys.argv[1]), persistent=False)
servers.start()
print(servers.postgres_pid, servers.redis_pid, flush=True)
time.sleep(600)
"""


# -- helpers ------------------------------------------------------------------


def _proc_states() -> dict[int, tuple[str, int]]:
    """pid -> (state, process group) for every process, from /proc."""
    states: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields follow the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        states[int(entry.name)] = (fields[0], int(fields[2]))
    return states


def _running(pids: list[int]) -> list[int]:
    """Which of `pids`, or members of their process groups, are still running.

    Zombies count as gone: once their parent is dead nobody may reap them here.
    """
    return [
        pid
        for pid, (state, group) in _proc_states().items()
        if state not in ("Z", "X") and (pid in pids or group in pids)
    ]


def _wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := _running(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _pids(servers: EmbeddedServers) -> list[int]:
    assert servers.postgres_pid is not None and servers.redis_pid is not None
    return [servers.postgres_pid, servers.redis_pid]


async def _query(database_url: str, sql: str) -> object:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _execute(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _redis(redis_url: str, *command: str) -> object:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


# -- tests --------------------------------------------------------------------


async def test_servers_answer(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path / "data", persistent=False) as servers:
        assert servers.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert servers.database_url.endswith("/astroq")
        assert servers.redis_url.startswith("redis://127.0.0.1:")
        assert await _query(servers.database_url, "SELECT 1") == 1
        assert await _query(servers.database_url, "SHOW max_connections") == "200"
        assert await _query(servers.database_url, "SHOW fsync") == "off"
        assert await _redis(servers.redis_url, "PING") is True


def test_start_is_idempotent_and_stop_is_safe_twice(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path / "data", persistent=False)
    servers.stop()  # never started
    servers.start()
    pids = _pids(servers)
    servers.start()
    assert _pids(servers) == pids
    servers.stop()
    servers.stop()


def test_second_instance_on_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path / "data", persistent=False) as first:
        second = EmbeddedServers(tmp_path / "data", persistent=False)
        with pytest.raises(AlreadyRunning) as refused:
            second.start()
        assert refused.value.pid == os.getpid()
        assert str(os.getpid()) in str(refused.value)
        second.stop()  # must not touch the first one's servers
        assert _running(_pids(first)) != []
    # Released on stop: the same dir can be taken again.
    with EmbeddedServers(tmp_path / "data", persistent=False):
        pass


def test_stop_leaves_no_processes(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path / "data", persistent=False)
    servers.start()
    pids = _pids(servers)
    assert sorted(_running(pids)) != []
    servers.stop()
    assert _running(pids) == []
    assert servers.postgres_pid is None and servers.redis_pid is None


async def test_restart_keeps_data_and_urls(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedServers(data_dir, persistent=True) as servers:
        urls = servers.database_url, servers.redis_url
        await _execute(servers.database_url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        await _redis(servers.redis_url, "SET", "kept", "yes")
    with EmbeddedServers(data_dir, persistent=True) as servers:
        assert (servers.database_url, servers.redis_url) == urls
        assert await _query(servers.database_url, "SELECT n FROM kept") == 7
        assert await _redis(servers.redis_url, "GET", "kept") == b"yes"


@pytest.mark.parametrize("persistent", [True, False])
async def test_redis_restart_on_same_port(tmp_path: Path, persistent: bool) -> None:
    with EmbeddedServers(tmp_path / "data", persistent=persistent) as servers:
        await _redis(servers.redis_url, "SET", "k", "v")
        old_pid, url = servers.redis_pid, servers.redis_url
        servers.stop_redis()
        assert servers.redis_pid is None
        assert old_pid is not None and _running([old_pid]) == []
        servers.start_redis()
        assert servers.redis_url == url
        assert servers.redis_pid != old_pid
        expected = b"v" if persistent else None
        assert await _redis(servers.redis_url, "GET", "k") == expected


async def test_stale_pid_files_naming_live_processes_are_ignored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedServers(data_dir, persistent=False):
        pass
    # A killed run leaves pid files behind, and by now the pid may belong to an
    # unrelated live process; PostgreSQL alone would refuse to start.
    with subprocess.Popen(["sleep", "60"]) as unrelated:
        try:
            postmaster_pid = data_dir / "pg" / "postmaster.pid"
            postmaster_pid.write_text(f"{unrelated.pid}\n{data_dir / 'pg'}\n0\n1\n\n\n\nready\n")
            (data_dir / "redis.pid").write_text(f"{unrelated.pid}\n")
            with EmbeddedServers(data_dir, persistent=False) as servers:
                assert await _query(servers.database_url, "SELECT 1") == 1
            assert unrelated.poll() is None
        finally:
            unrelated.kill()


async def test_kill_9_of_parent_leaves_no_orphans(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    parent = subprocess.Popen(
        [sys.executable, "-c", HOLD_SERVERS, str(data_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2, "the child python did not start the servers"

        with pytest.raises(AlreadyRunning) as refused:
            EmbeddedServers(data_dir).start()
        assert refused.value.pid == parent.pid

        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(children) == []
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()

    # The dead parent's lock went with it, and the next run starts cleanly.
    with EmbeddedServers(data_dir, persistent=False) as servers:
        assert await _query(servers.database_url, "SELECT 1") == 1


def test_command_line_prints_urls_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with subprocess.Popen(
        [sys.executable, "-m", "server.embedded", str(data_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as cli:
        try:
            assert cli.stdout is not None
            database_line, redis_line = cli.stdout.readline(), cli.stdout.readline()
            assert database_line.startswith("DATABASE_URL=postgresql://")
            assert redis_line.startswith("REDIS_URL=redis://")
            cli.send_signal(signal.SIGINT)  # also when this suite runs as a background job
            assert cli.wait(timeout=30) == 0
        finally:
            cli.kill()
    # Stopped and unlocked: the dir is free again.
    with EmbeddedServers(data_dir):
        pass
