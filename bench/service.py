"""The service under test as real OS processes: `astroq serve` and `astroq matcher`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# The bots act far faster than people: a bot's frames must not hit the per-socket
# rate limit (SPEC default 20/s, burst 40), so the run raises both.
BENCH_WS_RATE = 10_000
BENCH_WS_BURST = 20_000

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Service:
    database_url: str
    redis_url: str
    prefix: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48), repr=False)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="astroq-bench-run-")))
    processes: dict[str, Process] = field(default_factory=dict)
    gateways: int = 1  # `astroq serve` processes, each on its own port, as behind a load balancer
    ports: list[int] = field(init=False)  # every gateway's; the first is `port`

    def __post_init__(self) -> None:
        self.ports = [self.port, *(free_port() for _ in range(self.gateways - 1))]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def ws_urls(self) -> list[str]:
        """Every gateway's WebSocket URL; the first is `ws_url`."""
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    @property
    def gateway_names(self) -> list[str]:
        return ["serve", *(f"serve{i}" for i in range(2, len(self.ports) + 1))]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("ASTROQ_")]:
            del env[key]
        env.update(
            {
                "ASTROQ_DATABASE_URL": self.database_url,
                "ASTROQ_REDIS_URL": self.redis_url,
                "ASTROQ_REDIS_PREFIX": self.prefix,
                "ASTROQ_JWT_SECRET": self.secret,
                "ASTROQ_HOST": "127.0.0.1",
                "ASTROQ_PORT": str(self.port),
                "ASTROQ_METRICS_PORT": str(self.metrics_port),
                "ASTROQ_WS_RATE": str(BENCH_WS_RATE),
                "ASTROQ_WS_BURST": str(BENCH_WS_BURST),
                "ASTROQ_LOG_LEVEL": "WARNING",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        return env

    def _spawn(self, command: str, name: str | None = None, port: int | None = None) -> Process:
        name = name or command
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")
        env = self.env()
        if port is not None:
            env["ASTROQ_PORT"] = str(port)
        # The working directory is empty so that no stray `.env` changes the settings.
        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.launch", command],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        process = Process(name, popen, log_path, log)
        self.processes[name] = process
        return process

    def start(self) -> None:
        """Starts the matcher first (it rebuilds live state from PostgreSQL), then the gateway."""
        matcher = self._spawn("matcher")
        self._wait(matcher, f"http://127.0.0.1:{self.metrics_port}/healthz", b'"leader":1')
        self._wait_alive()
        for name, port in zip(self.gateway_names, self.ports):
            gateway = self._spawn("serve", name, port)
            self._wait(gateway, f"http://127.0.0.1:{port}/readyz", None)

    def _wait_alive(self) -> None:
        """The leader is up; wait until its rebuild of live state has finished too."""
        import redis

        from matcher.keys import Keys

        client = redis.Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not client.exists(Keys(self.prefix).alive):
                if time.monotonic() > deadline:
                    raise RuntimeError("astroq matcher did not rebuild live state in time")
                time.sleep(0.05)
        finally:
            client.close()

    def _wait(self, process: Process, url: str, needle: bytes | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"astroq {process.name} exited:\n{process.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    body = reply.read()
                    if reply.status == 200 and (needle is None or needle in body):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"astroq {process.name} not ready in {START_TIMEOUT_S:.0f} s:\n{process.tail()}")

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self) -> None:
        for name in (*self.gateway_names, "matcher"):
            if name in self.processes:
                self.processes[name].stop()

    def check_alive(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise RuntimeError(f"astroq {process.name} died:\n{process.tail()}")

    def warnings(self, limit: int = 12) -> list[str]:
        """What the processes logged at WARNING or above, each distinct message once with a count.

        A traceback counts as its last line (the exception). The run is only as good
        as this list is short.
        """
        counts: dict[str, int] = {}
        for process in self.processes.values():
            try:
                lines = process.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            in_traceback = False
            for index, line in enumerate(lines):
                if line.startswith("Traceback"):
                    in_traceback = True
                    continue
                if in_traceback:
                    if line.startswith((" ", "\t")) or not line.strip():
                        continue
                    if line.startswith(("During handling", "The above exception")):
                        continue
                    in_traceback = False
                    key = f"{process.name}: {line[:200]}"
                elif " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
                    # Drop the time stamp: the same message at another time is the same message.
                    key = f"{process.name}: {line.split(' ', 2)[-1][:200]}"
                else:
                    continue
                counts[key] = counts.get(key, 0) + 1
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        return [f"{text} (x{count})" for text, count in ranked[:limit]]

    def cleanup(self, keep_logs: bool) -> None:
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
