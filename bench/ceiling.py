"""The ceilings the service is held against, measured on this machine in the same run.

- a bare websockets echo server (bench/echo.py), driven by the same load
  generator the service is: pipelined frames in and out per second;
- Redis itself for the commands the matcher and the gateway use: redis-benchmark
  when installed (unpipelined and pipelined), else a pipelined redis-py loop.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from bench.service import REPO, free_port

PAYLOAD = "x" * 160  # about one frame's worth of JSON


def start_echo() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    popen = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", str(port)], cwd=REPO, stdout=subprocess.PIPE
    )
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if line.strip() != b"ready":
        popen.kill()
        raise RuntimeError("the echo server did not start")
    return popen, f"ws://127.0.0.1:{port}/"


def redis_commands(prefix: str) -> list[tuple[str, list[str]]]:
    """The commands on the hot path, with keys under the run's own prefix."""
    return [
        ("EVALSHA-like script (ZCOUNT)", ["EVAL", "return redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')", "1", f"{prefix}:rb:z"]),
        ("ZADD", ["ZADD", f"{prefix}:rb:z", "__rand_int__", "m__rand_int__"]),
        ("HSET", ["HSET", f"{prefix}:rb:h", "f", PAYLOAD]),
        ("RPUSH", ["RPUSH", f"{prefix}:rb:q", PAYLOAD]),
        ("LPOP", ["LPOP", f"{prefix}:rb:q"]),
        ("XADD", ["XADD", f"{prefix}:rb:s", "MAXLEN", "~", "1000", "*", "d", PAYLOAD]),
        ("PUBLISH", ["PUBLISH", f"{prefix}:rb:ch", PAYLOAD]),
    ]


def redis_benchmark(redis_url: str, prefix: str, requests: int) -> dict[str, Any]:
    """Requests per second per command, 50 clients, unpipelined and 16 deep."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return asyncio.run(_redis_py_ceiling(redis_url, prefix, requests))
    parts = urlsplit(redis_url)
    base = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "-c", "50",
            "-r", "100000", "-n", str(requests), "--csv"]
    if parts.path.strip("/"):
        base += ["--dbnum", parts.path.strip("/")]
    if parts.password:
        base += ["-a", parts.password]
    rates: dict[str, dict[str, float]] = {}
    for name, command in redis_commands(prefix):
        for depth in (1, 16):
            out = subprocess.run(base + ["-P", str(depth)] + command, capture_output=True, text=True, timeout=60)
            rows = list(csv.reader(io.StringIO(out.stdout)))
            rps = float(rows[-1][1]) if len(rows) >= 2 else 0.0
            rates.setdefault(name, {})[f"P{depth}"] = round(rps)
    return {"tool": "redis-benchmark -c 50", "rates": rates}


async def _redis_py_ceiling(redis_url: str, prefix: str, requests: int) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    rates: dict[str, dict[str, float]] = {}
    try:
        for name, command in redis_commands(prefix):
            args = [a.replace("__rand_int__", "1") for a in command]
            started = time.perf_counter()
            for _ in range(max(1, requests // 500)):
                pipe = redis.pipeline(transaction=False)
                for _ in range(500):
                    pipe.execute_command(*args)
                await pipe.execute()
            rates[name] = {"P500": round(requests / (time.perf_counter() - started))}
    finally:
        await redis.aclose()
    return {"tool": "redis-py pipeline of 500 (redis-benchmark not installed)", "rates": rates}
