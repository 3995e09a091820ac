"""Chaos suite: faults injected into a live astroq under load, SPEC §6 checked after each.

    python -m bench.chaos            # full size: 3 rounds of every fault
    python -m bench.chaos --quick    # CI size: 1 round, fewer clients
    python -m bench.chaos --json     # the figures as one JSON object, last line of stdout

What runs, each its own OS process, all on loopback:
- PostgreSQL and Redis from server.embedded (persistent=False, in a temporary
  directory): this suite restarts Redis and stops PostgreSQL, which must never
  happen to a machine's shared servers;
- two gateways (`astroq serve`) and two matchers (`astroq matcher`);
- this process: the load (user and astrologer bots over WebSockets) and the
  fault injector.

Every bot records each request_id (and session_id) it got an ack for. When its
socket drops it reconnects to the other gateway and checks, from `ready`, that
it resumed its place (the same request_id). The faults, each `--rounds` times:

- matcher_kill:  kill -9 of the active matcher; the standby must lead within
                 ASTROQ_MATCHER_LEASE + 1 s; the killed one restarts as standby;
- gateway_kill:  kill -9 of the gateway holding most clients; they reconnect to
                 the other and resume; the gateway restarts;
- redis_restart: Redis stopped and started empty; the matcher rebuilds live
                 state from PostgreSQL, every acknowledged waiting request back
                 in its line, in the same order;
- pg_stop:       PostgreSQL stopped (a real fast shutdown, not SIGSTOP) for
                 10 s; /readyz must answer 503; afterwards the service catches up;
- redis_pause:   Redis SIGSTOP'd for 5 s, then SIGCONT;
- matcher_pause: the active matcher SIGSTOP'd for 2x the lease; the standby takes
                 over; after SIGCONT the paused one must step down (its leader
                 gauge goes to 0) without writing (fencing).

After each fault the record in PostgreSQL is checked (tests/invariants.py) and
every acknowledged request must be in it. At the end the clients wind down
and every request must be terminal. Any broken promise makes the exit status 1.
Every wait is bounded; the whole run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from matcher.keys import Keys
from server.auth import Tokens, TokenType, hash_password
from server.embedded import EmbeddedServers

try:
    from tests.invariants import Violations, check, read_record
except ModuleNotFoundError:  # run from outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.invariants import Violations, check, read_record

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "chaos-secret-that-is-long-enough-for-hs256!!"
ADMIN_EMAIL = "chaos-admin@astroq.test"
ADMIN_PASSWORD = "chaos-admin-password"

FAULTS = ("matcher_kill", "gateway_kill", "redis_restart", "pg_stop", "redis_pause", "matcher_pause")

ACK_TIMEOUT_S = 20.0  # past a PostgreSQL outage (10 s) and its catch-up
READY_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 1.0
PROCESS_START_S = 60.0
HEALTHY_TIMEOUT_S = 15.0
POLL_S = 0.02
HEARTBEAT_FRESH_MS = 3_000  # a gateway heartbeat key (5 s) renewed within the last 2 s

_PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# ---- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    users: int
    astrologers: int
    rounds: int
    calm_s: float  # load runs undisturbed this long before each fault
    seed: int
    lease_s: float = 1.0
    offer_timeout_s: float = 2.0
    grace_s: float = 5.0
    pg_down_s: float = 10.0
    redis_pause_s: float = 5.0
    faults: tuple[str, ...] = FAULTS
    keep: bool = False


QUICK = dict(users=24, astrologers=5, rounds=1, calm_s=3.0)
FULL = dict(users=120, astrologers=12, rounds=3, calm_s=5.0)


# ---- the processes ------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def astroq_command() -> list[str]:
    beside = Path(sys.executable).parent / "astroq"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "server.cli"]


@dataclass
class Proc:
    name: str
    command: str  # serve | matcher
    port: int  # the gateway's port, or the matcher's metrics port
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Cluster:
    """The embedded stores plus two gateways and two matchers as OS processes."""

    def __init__(self, config: Config, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.servers = EmbeddedServers(work_dir / "stores", persistent=False)
        self.gateways = [
            Proc(f"gateway-{i}", "serve", free_port(), work_dir / f"gateway-{i}.log") for i in range(2)
        ]
        self.matchers = [
            Proc(f"matcher-{i}", "matcher", free_port(), work_dir / f"matcher-{i}.log") for i in range(2)
        ]
        self.keys = Keys()
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
        self.redis: Redis | None = None
        self.pool: asyncpg.Pool | None = None

    # -- environment --------------------------------------------------------------
    def env(self, proc: Proc | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTROQ_", "PG"))}
        # The processes run the code tree this runner belongs to.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env.update(
            ASTROQ_DATABASE_URL=self.servers.database_url,
            ASTROQ_REDIS_URL=self.servers.redis_url,
            ASTROQ_JWT_SECRET=JWT_SECRET,
            ASTROQ_ADMIN_EMAIL=ADMIN_EMAIL,
            ASTROQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
            ASTROQ_HOST="127.0.0.1",
            ASTROQ_MATCHER_LEASE=str(self.config.lease_s),
            ASTROQ_OFFER_TIMEOUT=str(self.config.offer_timeout_s),
            ASTROQ_RECONNECT_GRACE=str(self.config.grace_s),
            ASTROQ_MAX_WAIT="0",
            ASTROQ_WS_RATE="1000",
            ASTROQ_WS_BURST="2000",
            ASTROQ_DEMO="0",
            ASTROQ_LOG_LEVEL="INFO",
        )
        if proc is not None and proc.command == "serve":
            env.update(ASTROQ_PORT=str(proc.port), ASTROQ_METRICS_PORT="0")
        elif proc is not None:
            env.update(ASTROQ_PORT=str(free_port()), ASTROQ_METRICS_PORT=str(proc.port))
        return env

    # -- lifecycle ----------------------------------------------------------------
    def start_stores(self) -> None:
        # From the main thread: the stores die with the thread that started them.
        self.servers.start()

    async def start(self) -> None:
        migrate = await asyncio.create_subprocess_exec(
            *astroq_command(), "migrate", env=self.env(None), cwd=self.work_dir,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(migrate.communicate(), PROCESS_START_S)
        if migrate.returncode != 0:
            raise RuntimeError(f"astroq migrate failed: {err.decode()}")
        self.redis = Redis.from_url(
            self.servers.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.pool = await asyncpg.create_pool(self.servers.database_url, min_size=1, max_size=4)
        for proc in [*self.gateways, *self.matchers]:
            self.spawn(proc)
        await asyncio.gather(*(self.wait_up(p) for p in [*self.gateways, *self.matchers]))

    def spawn(self, proc: Proc) -> None:
        with open(proc.log_path, "ab") as out:
            out.write(f"---- start #{proc.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            proc.popen = subprocess.Popen(
                [*astroq_command(), proc.command],
                env=self.env(proc),
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        proc.starts += 1

    async def wait_up(self, proc: Proc) -> None:
        path = "/readyz" if proc.command == "serve" else "/healthz"
        deadline = time.monotonic() + PROCESS_START_S
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited at start; see {proc.log_path}")
            try:
                if (await self.http.get(proc.url + path)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{proc.name} not up after {PROCESS_START_S}s")

    def kill(self, proc: Proc, sig: signal.Signals = signal.SIGKILL) -> None:
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            assert proc.popen is not None
            proc.popen.wait(10)

    async def stop(self) -> None:
        for proc in [*self.gateways, *self.matchers]:
            if proc.alive():
                assert proc.popen is not None
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.popen.terminate()
                except ProcessLookupError:
                    pass
        for proc in [*self.gateways, *self.matchers]:
            if proc.popen is not None:
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.pool is not None:
            self.pool.terminate()
        redis_pid = self.servers.redis_pid
        if redis_pid is not None:
            try:
                os.kill(redis_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.servers.stop()

    # -- looking at it -------------------------------------------------------------
    async def leader_gauge(self, proc: Proc) -> int | None:
        """The matcher's astroq_matcher_leader gauge; None when it does not answer."""
        try:
            reply = await self.http.get(proc.url + "/metrics", timeout=0.5)
        except httpx.HTTPError:
            return None
        match = re.search(r"^astroq_matcher_leader (\S+)$", reply.text, re.M)
        return int(float(match.group(1))) if match else None

    async def leaders(self) -> list[int | None]:
        return list(await asyncio.gather(*(self.leader_gauge(m) for m in self.matchers)))

    async def wait_gauge(
        self, proc: Proc, value: int, timeout_s: float, since: float | None = None
    ) -> float | None:
        """Seconds from `since` (default: now) until proc's leader gauge reads
        `value`; None if not within timeout_s."""
        started = time.monotonic() if since is None else since
        while time.monotonic() - started < timeout_s:
            if await self.leader_gauge(proc) == value:
                return time.monotonic() - started
            await asyncio.sleep(POLL_S)
        return None

    async def active_matcher(self, timeout_s: float = 10.0) -> Proc:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            gauges = await self.leaders()
            if gauges.count(1) == 1:
                return self.matchers[gauges.index(1)]
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no single active matcher (gauges {await self.leaders()})")

    async def readyz(self, proc: Proc, timeout_s: float = HTTP_TIMEOUT_S) -> int | str:
        try:
            return (await self.http.get(proc.url + "/readyz", timeout=timeout_s)).status_code
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError:
            return "refused"

    async def wait_healthy(self, timeout_s: float = HEALTHY_TIMEOUT_S) -> float:
        """Until both gateways are ready and heartbeating, exactly one matcher
        leads and Redis holds live state."""
        started = time.monotonic()
        while True:
            codes = await asyncio.gather(*(self.readyz(g) for g in self.gateways))
            gauges = await self.leaders()
            alive = await self.redis_alive()
            beating = await self.gateway_heartbeats()
            if all(c == 200 for c in codes) and gauges.count(1) == 1 and alive and beating == 2:
                return time.monotonic() - started
            if time.monotonic() - started >= timeout_s:
                raise RuntimeError(
                    f"not healthy after {timeout_s:.0f} s: readyz {codes}, leader gauges {gauges},"
                    f" live state {alive}, gateway heartbeats {beating}"
                )
            await asyncio.sleep(0.1)

    async def gateway_heartbeats(self) -> int | None:
        """How many gateways renewed their heartbeat key in Redis within the last 2 s
        (a gateway beats every second; its key lives 5 s)."""
        assert self.redis is not None
        try:
            keys = [k async for k in self.redis.scan_iter(match=self.keys.m("gw:*"), count=1000)]
            if not keys:
                return 0
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.pttl(key)
            return sum(1 for ttl in await pipe.execute() if ttl > HEARTBEAT_FRESH_MS)
        except Exception:
            return None

    async def redis_alive(self) -> bool:
        assert self.redis is not None
        try:
            return bool(await self.redis.exists(self.keys.alive))
        except Exception:
            return False

    async def open_requests(self) -> int:
        assert self.pool is not None
        try:
            return int(
                await self.pool.fetchval("SELECT count(*) FROM requests WHERE state = 'open'", timeout=5)
            )
        except Exception:
            return -1


# ---- clients ------------------------------------------------------------------------------


class Dropped(Exception):
    """The socket closed (or never opened)."""


class NoAck(Exception):
    """No ack or error within ACK_TIMEOUT_S: resynchronise from `ready`."""


class Resync(Exception):
    """The client's idea of its state is wrong: reconnect and take `ready`'s."""


_CLOSED: dict[str, Any] = {"type": "__closed__"}


class Link:
    """One socket: a reader routes acks and errors to their callers, other frames to a queue."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.refs = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                ref = frame.get("ref")
                if frame.get("type") in ("ack", "error") and ref in self.waiters:
                    waiter = self.waiters.pop(ref)
                    if not waiter.done():
                        waiter.set_result(frame)
                    continue
                self.frames.put_nowait(frame)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self.frames.put_nowait(_CLOSED)
            for waiter in self.waiters.values():
                if not waiter.done():
                    waiter.set_exception(Dropped())
            self.waiters.clear()

    async def call(self, frame: dict[str, Any], timeout_s: float = ACK_TIMEOUT_S) -> dict[str, Any]:
        self.refs += 1
        ref = f"r{self.refs}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[ref] = waiter
        try:
            await self.ws.send(orjson.dumps({**frame, "ref": ref}).decode())
        except (ConnectionClosed, OSError):
            self.waiters.pop(ref, None)
            raise Dropped() from None
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except asyncio.TimeoutError:
            self.waiters.pop(ref, None)
            raise NoAck(frame["type"]) from None

    async def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next non-ack frame, or None after timeout_s; Dropped once closed."""
        try:
            frame = await asyncio.wait_for(self.frames.get(), max(0.001, timeout_s))
        except asyncio.TimeoutError:
            return None
        if frame is _CLOSED:
            self.frames.put_nowait(_CLOSED)
            raise Dropped()
        return frame

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 2)
        except Exception:
            pass
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def open_link(url: str, token: str) -> tuple[Link, dict[str, Any]]:
    """Connects, authenticates and returns the link with its `ready` state."""
    try:
        ws = await asyncio.wait_for(
            connect(url, max_size=None, open_timeout=5, close_timeout=1), 6
        )
    except (OSError, InvalidHandshake, InvalidStatus, asyncio.TimeoutError) as exc:
        raise Dropped(repr(exc)) from None
    link = Link(ws)
    try:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        frame = await link.next(READY_TIMEOUT_S)
    except (ConnectionClosed, OSError, Dropped):
        await link.close()
        raise Dropped("closed before ready") from None
    if frame is None or frame.get("type") != "ready":
        await link.close()
        raise Dropped(f"no ready: {frame}")
    return link, frame["state"]


@dataclass
class Ledger:
    """What the clients were told, to hold against the record."""

    acked_requests: set[str] = field(default_factory=set)
    acked_sessions: set[str] = field(default_factory=set)
    reconnects: int = 0
    resume_checks: int = 0  # reconnects of a client that had an open request or session
    resumed: int = 0  # ... whose `ready` showed the same request (or its session)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (request_id, who) not in `ready`
    no_ack: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connect_failures: int = 0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Bot:
    def __init__(
        self, account_id: str, token: str, urls: list[str], gateway: int, ledger: Ledger, rng: random.Random
    ) -> None:
        self.account_id = account_id
        self.token = token
        self.urls = urls
        self.gateway = gateway
        self.ledger = ledger
        self.rng = rng
        self.link: Link | None = None

    async def _connect(self, stop: asyncio.Event) -> dict[str, Any]:
        backoff_s = 0.1
        first = True
        while True:
            if not first:
                # Dropped: go to the other gateway, as a load balancer would.
                self.gateway = 1 - self.gateway
            first = False
            try:
                self.link, state = await open_link(self.urls[self.gateway], self.token)
                return state
            except Dropped:
                self.ledger.connect_failures += 1
            if stop.is_set():
                raise Dropped("stopping")
            await asyncio.sleep(backoff_s)
            backoff_s = min(1.0, backoff_s * 2)

    async def _drop(self) -> None:
        if self.link is not None:
            await self.link.close()
            self.link = None

    async def run(self, stop: asyncio.Event) -> None:
        reconnecting = False
        while not stop.is_set():
            try:
                if self.link is None:
                    if reconnecting:
                        self.gateway = 1 - self.gateway
                        self.ledger.reconnects += 1
                    state = await self._connect(stop)
                    await self.resync(state, reconnecting)
                    reconnecting = True
                await self.step(stop)
            except (Dropped, NoAck, Resync) as exc:
                if isinstance(exc, NoAck):
                    self.ledger.no_ack += 1
                await self._drop()
        await self._drop()

    async def resync(self, state: dict[str, Any], reconnecting: bool) -> None:
        raise NotImplementedError

    async def step(self, stop: asyncio.Event) -> None:
        raise NotImplementedError


class UserBot(Bot):
    def __init__(self, *args: Any, astrologer_ids: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.astrologer_ids = astrologer_ids
        self.request: str | None = None
        self.session: tuple[str, str] | None = None  # (session_id, request_id)
        self.end_at = 0.0
        self.cancel_at: float | None = None
        self.next_request_at = time.monotonic() + self.rng.uniform(0, 1.0)

    async def resync(self, state: dict[str, Any], reconnecting: bool) -> None:
        request, session = state.get("request"), state.get("session")
        known = self.request or (self.session[1] if self.session else None)
        if reconnecting and known is not None:
            self.ledger.resume_checks += 1
            if (request and request["request_id"] == known) or (session and session["request_id"] == known):
                self.ledger.resumed += 1
            else:
                self.ledger.missing.append((known, self.account_id))
        self.request = request["request_id"] if request else None
        if session:
            if self.session is None or self.session[0] != session["session_id"]:
                self.end_at = time.monotonic() + self.rng.uniform(0.3, 1.5)
            self.session = (session["session_id"], session["request_id"])
        else:
            self.session = None
        if self.request is None and self.session is None:
            self.next_request_at = min(self.next_request_at, time.monotonic() + 0.3)

    def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        now = time.monotonic()
        if kind == "assigned" and frame.get("request_id") == self.request:
            self.session = (frame["session_id"], frame["request_id"])
            self.request = None
            self.cancel_at = None
            self.end_at = now + self.rng.uniform(0.3, 2.0)
        elif kind == "cancelled" and frame.get("request_id") == self.request:
            self.request = None
            self.cancel_at = None
            self.next_request_at = now + self.rng.uniform(0.1, 0.8)
        elif kind == "session_ended" and self.session and frame.get("session_id") == self.session[0]:
            self.session = None
            self.next_request_at = now + self.rng.uniform(0.1, 0.8)

    async def step(self, stop: asyncio.Event) -> None:
        assert self.link is not None
        now = time.monotonic()
        if self.session is not None and now >= self.end_at:
            reply = await self.link.call({"type": "end", "session_id": self.session[0]})
            if reply["type"] == "error":
                self.ledger.error(reply["code"])
                if reply["code"] not in ("already_ended", "not_found"):
                    self.end_at = now + 0.5
                    return
            self.session = None
            self.next_request_at = now + self.rng.uniform(0.1, 0.8)
            return
        if self.request is not None and self.cancel_at is not None and now >= self.cancel_at:
            self.cancel_at = None
            reply = await self.link.call({"type": "cancel", "request_id": self.request})
            if reply["type"] == "error":
                self.ledger.error(reply["code"])
                if reply["code"] != "not_found":
                    raise Resync()
            return
        if self.request is None and self.session is None and now >= self.next_request_at and not stop.is_set():
            direct = self.rng.random() < 0.15
            target = self.rng.choice(self.astrologer_ids) if direct else None
            reply = await self.link.call(
                {"type": "request", "kind": self.rng.choice(["chat", "call"]), "astrologer_id": target}
            )
            if reply["type"] == "ack":
                self.request = reply["request_id"]
                self.ledger.acked_requests.add(reply["request_id"])
                self.cancel_at = now + self.rng.uniform(1, 8) if self.rng.random() < 0.1 else None
                return
            self.ledger.error(reply["code"])
            if reply["code"] == "already_open":
                raise Resync()
            self.next_request_at = now + self.rng.uniform(0.2, 0.6)
            return
        wait_s = 0.5
        if self.session is not None:
            wait_s = min(wait_s, self.end_at - now)
        elif self.request is None:
            wait_s = min(wait_s, self.next_request_at - now)
        elif self.cancel_at is not None:
            wait_s = min(wait_s, self.cancel_at - now)
        frame = await self.link.next(wait_s)
        if frame is not None:
            self._handle(frame)


class AstrologerBot(Bot):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: dict[str, float] = {}  # session id -> when to end it
        self.pending: list[dict[str, Any]] = []  # offers to answer

    async def resync(self, state: dict[str, Any], reconnecting: bool) -> None:
        now = time.monotonic()
        live = {s["session_id"] for s in state.get("sessions") or []}
        self.sessions = {sid: self.sessions.get(sid, now + self.rng.uniform(0.5, 2.5)) for sid in live}
        self.pending = list(state.get("offers") or [])
        if state.get("status") != "online":
            await self._online()

    async def _online(self) -> None:
        assert self.link is not None
        reply = await self.link.call({"type": "status", "status": "online"})
        if reply["type"] == "error":
            self.ledger.error(reply["code"])

    async def step(self, stop: asyncio.Event) -> None:
        assert self.link is not None
        now = time.monotonic()
        due = [sid for sid, at in self.sessions.items() if at <= now]
        if due:
            sid = due[0]
            reply = await self.link.call({"type": "end", "session_id": sid})
            if reply["type"] == "error":
                self.ledger.error(reply["code"])
                if reply["code"] not in ("already_ended", "not_found"):
                    self.sessions[sid] = now + 0.5
                    return
            self.sessions.pop(sid, None)
            return
        if self.pending:
            offer = self.pending.pop(0)
            roll = self.rng.random()
            if roll < 0.7:
                reply = await self.link.call({"type": "accept", "offer_id": offer["offer_id"]})
                if reply["type"] == "ack":
                    self.ledger.acked_sessions.add(reply["session_id"])
                    self.sessions.setdefault(reply["session_id"], now + self.rng.uniform(0.5, 2.5))
                else:
                    self.ledger.error(reply["code"])
            elif roll < 0.9:
                reply = await self.link.call({"type": "decline", "offer_id": offer["offer_id"]})
                if reply["type"] == "error":
                    self.ledger.error(reply["code"])
            # else: let it expire
            return
        wait_s = 0.5
        if self.sessions:
            wait_s = min(wait_s, min(self.sessions.values()) - now)
        frame = await self.link.next(wait_s)
        if frame is None:
            return
        kind = frame.get("type")
        if kind == "offer":
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            self.pending.append(frame)
        elif kind == "assigned" and frame.get("session_id"):
            self.sessions.setdefault(frame["session_id"], now + self.rng.uniform(0.5, 2.5))
        elif kind == "session_ended":
            self.sessions.pop(str(frame.get("session_id")), None)
        elif kind == "status" and frame.get("status") != "online":
            await self._online()


# ---- the run ------------------------------------------------------------------------------


@dataclass
class FaultResult:
    kind: str
    round: int
    in_flight: int
    ok: bool = True
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    new_violations: dict[str, int] = field(default_factory=dict)


@dataclass
class Account:
    id: str
    token: str


class Chaos:
    def __init__(self, config: Config, cluster: Cluster) -> None:
        self.config = config
        self.cluster = cluster
        self.rng = random.Random(config.seed)
        self.tokens = Tokens(JWT_SECRET, 86_400, 86_400)
        self.ledger = Ledger()
        self.users: list[Account] = []
        self.astrologers: list[Account] = []
        self.user_bots: list[UserBot] = []
        self.astrologer_bots: list[AstrologerBot] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.results: list[FaultResult] = []
        self.seen: dict[str, set[Any]] = {}  # violation kind -> ids, over every check
        self.lost: set[str] = set()  # acknowledged requests lost (ids)
        self.lost_sessions: set[str] = set()
        self.lost_places: set[str] = set()
        self.unacked_lost = 0  # applied in Redis, never persisted, never acknowledged
        self.probe = Account("", "")
        self.interventions: list[str] = []
        self.last_record: Any = None
        self.data_losses: list[datetime] = []  # when Redis came back empty  # a user of its own that checks the service answers

    # -- accounts ---------------------------------------------------------------------
    async def make_accounts(self) -> None:
        cluster = self.cluster
        login = await cluster.http.post(
            cluster.gateways[0].url + "/api/v1/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            timeout=10,
        )
        login.raise_for_status()
        headers = {"authorization": f"Bearer {login.json()['access_token']}"}
        for i in range(self.config.astrologers):
            reply = await cluster.http.post(
                cluster.gateways[i % 2].url + "/api/v1/admin/astrologers",
                json={
                    "email": f"astro{i}-{uuid.uuid4().hex[:6]}@chaos.test",
                    "password": "astro-password",
                    "name": f"astro{i}",
                    "weight": self.rng.choice([1, 2, 3]),
                    "capacity": self.rng.randint(1, 2),
                    "is_top": i == 0,
                },
                headers=headers,
                timeout=10,
            )
            reply.raise_for_status()
            aid = reply.json()["astrologer"]["id"]
            self.astrologers.append(Account(aid, self._token(aid, "astrologer")))
        password_hash = await hash_password("user-password")
        rows = []
        for i in range(self.config.users):
            uid = str(uuid.uuid4())
            rows.append((uid, f"user{i}-{uid[:8]}@chaos.test", f"user{i}", "user", password_hash))
            self.users.append(Account(uid, self._token(uid, "user")))
        assert cluster.pool is not None
        await cluster.pool.executemany(
            "INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5)", rows
        )

    def _token(self, account_id: str, role: str) -> str:
        return self.tokens.issue(account_id, role, TokenType.ACCESS).token

    # -- load --------------------------------------------------------------------------
    def start_load(self) -> None:
        urls = [g.ws_url for g in self.cluster.gateways]
        astrologer_ids = [a.id for a in self.astrologers]
        for i, account in enumerate(self.astrologers):
            self.astrologer_bots.append(
                AstrologerBot(account.id, account.token, urls, i % 2, self.ledger, random.Random(self.rng.random()))
            )
        for i, account in enumerate(self.users):
            self.user_bots.append(
                UserBot(
                    account.id, account.token, urls, i % 2, self.ledger, random.Random(self.rng.random()),
                    astrologer_ids=astrologer_ids,
                )
            )
        bots: list[Bot] = [*self.astrologer_bots, *self.user_bots]
        for bot in bots:
            self.tasks.append(asyncio.create_task(bot.run(self.stop)))

    async def stop_load(self) -> None:
        self.stop.set()
        done, pending = await asyncio.wait(self.tasks, timeout=ACK_TIMEOUT_S + 10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log(f"a bot failed: {task.exception()!r}")

    def clients_on(self, index: int) -> int:
        return sum(1 for b in [*self.user_bots, *self.astrologer_bots] if b.link is not None and b.gateway == index)

    # -- checks ------------------------------------------------------------------------
    async def check_record(self, *, final: bool) -> Violations:
        assert self.cluster.pool is not None
        # What the clients were told before the snapshot: an ack goes out only
        # after its change is committed, so the snapshot must hold all of it.
        acked_requests = set(self.ledger.acked_requests)
        acked_sessions = set(self.ledger.acked_sessions)
        missing = list(self.ledger.missing)
        for attempt in range(5):
            try:
                async with self.cluster.pool.acquire() as conn:
                    record = await read_record(conn)
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if attempt == 4:
                    raise
                await asyncio.sleep(1)
        found = check(record, final=final)
        request_ids = {str(r["id"]) for r in record.requests}
        session_ids = {str(s["id"]) for s in record.sessions}
        self.lost |= acked_requests - request_ids
        self.lost_sessions |= acked_sessions - session_ids
        # A client that came back and did not find its request: fine if the request
        # ended meanwhile (the record says so), lost otherwise.
        state_of = {str(r["id"]): r["state"] for r in record.requests}
        self.last_record = record
        open_sessions = {str(s["request_id"]) for s in record.sessions if s["ended_at"] is None}
        for request_id, _who in missing:
            if state_of.get(request_id) == "open" or request_id in open_sessions:
                self.lost_places.add(request_id)
        return found

    def _count_new(self, found: Violations) -> dict[str, int]:
        new: dict[str, int] = {}
        for kind, items in (
            ("double_assigned", found.double_assigned),
            ("assignment_mismatch", found.assignment_mismatch),
            ("capacity_violations", list(found.capacity.items())),
            ("passed_over", found.passed_over),
            ("user_overlaps", found.user_overlaps),
            ("bad_terminal", found.bad_terminal),
            ("reoffered", found.reoffered),
        ):
            seen = self.seen.setdefault(kind, set())
            fresh = set(items) - seen
            if fresh:
                new[kind] = len(fresh)
                seen |= fresh
        return new

    async def after_fault(self, result: FaultResult) -> None:
        try:
            result.figures["healthy_after_s"] = round(await self.cluster.wait_healthy(), 2)
        except RuntimeError as exc:
            result.problems.append(str(exc))
            await self.intervene(result)
        await asyncio.sleep(1.5)  # frames in flight settle; missing resumes get their end recorded
        lost_before = (len(self.lost), len(self.lost_sessions), len(self.lost_places))
        found = await self.check_record(final=False)
        result.new_violations = self._count_new(found)
        lost_after = (len(self.lost), len(self.lost_sessions), len(self.lost_places))
        if lost_after != lost_before:
            result.problems.append(
                f"acknowledged work lost: requests {lost_after[0] - lost_before[0]}, sessions "
                f"{lost_after[1] - lost_before[1]}, places {lost_after[2] - lost_before[2]}"
            )
        for kind, n in result.new_violations.items():
            if kind != "reoffered":
                result.problems.append(f"{n} new {kind}")
        result.ok = not result.problems

    async def intervene(self, result: FaultResult) -> None:
        """What an operator would do about a process that lives but no longer works:
        restart it. Counted, reported, and the run goes on to the next fault."""
        cluster = self.cluster
        restarted = []
        if (await cluster.leaders()).count(1) != 1:
            restarted += cluster.matchers
        if await cluster.gateway_heartbeats() != len(cluster.gateways):
            restarted += cluster.gateways
        for proc in restarted:
            if proc.alive():
                cluster.kill(proc)
            cluster.spawn(proc)
        await asyncio.gather(*(cluster.wait_up(p) for p in restarted))
        self.interventions.append(f"{result.kind} r{result.round}: restarted {[p.name for p in restarted]}")
        result.figures["intervention"] = [p.name for p in restarted]
        log(f"  intervention: restarted {[p.name for p in restarted]}")
        try:
            result.figures["healthy_after_intervention_s"] = round(await cluster.wait_healthy(), 2)
        except RuntimeError as exc:
            result.problems.append(f"still unhealthy after restarting: {exc}")

    # -- faults ------------------------------------------------------------------------
    async def matcher_kill(self, result: FaultResult) -> None:
        cluster = self.cluster
        active = await cluster.active_matcher()
        standby = next(m for m in cluster.matchers if m is not active)
        killed_at = time.monotonic()  # failover: from the kill to the standby's gauge reading 1
        cluster.kill(active)
        took_s = await cluster.wait_gauge(standby, 1, self.config.lease_s + 10, since=killed_at)
        result.figures["victim"] = active.name
        result.figures["failover_s"] = None if took_s is None else round(took_s, 3)
        if took_s is None or took_s > self.config.lease_s + 1:
            result.problems.append(f"standby took {took_s} s to lead (limit {self.config.lease_s + 1} s)")
        log(f"  {active.name} killed; {standby.name} leads after {took_s and round(took_s, 3)} s")
        cluster.spawn(active)
        await cluster.wait_up(active)
        await asyncio.sleep(self.config.lease_s)
        gauge = await cluster.leader_gauge(active)
        result.figures["restarted_as_standby"] = gauge == 0
        if gauge != 0:
            result.problems.append(f"the restarted {active.name} reads leader={gauge}")

    async def matcher_pause(self, result: FaultResult) -> None:
        cluster = self.cluster
        active = await cluster.active_matcher()
        standby = next(m for m in cluster.matchers if m is not active)
        paused_at = time.monotonic()
        cluster.kill(active, signal.SIGSTOP)
        try:
            took_s = await cluster.wait_gauge(standby, 1, self.config.lease_s + 10, since=paused_at)
            left_s = 2 * self.config.lease_s - (time.monotonic() - paused_at)
            if left_s > 0:
                await asyncio.sleep(left_s)
        finally:
            result.figures["paused_s"] = round(time.monotonic() - paused_at, 2)
            cluster.kill(active, signal.SIGCONT)
        result.figures["victim"] = active.name
        result.figures["takeover_s"] = None if took_s is None else round(took_s, 3)
        if took_s is None or took_s > self.config.lease_s + 1:
            result.problems.append(f"standby took {took_s} s to lead (limit {self.config.lease_s + 1} s)")
        step_down_s = await cluster.wait_gauge(active, 0, self.config.lease_s + 5)
        result.figures["step_down_s"] = None if step_down_s is None else round(step_down_s, 3)
        if step_down_s is None:
            result.problems.append(f"the paused {active.name} did not step down after SIGCONT")
        gauges = await cluster.leaders()
        result.figures["leaders_after"] = gauges.count(1)
        log(f"  {active.name} paused {result.figures['paused_s']} s; {standby.name} led after "
            f"{result.figures['takeover_s']} s; the paused one stepped down after {result.figures['step_down_s']} s")

    async def gateway_kill(self, result: FaultResult) -> None:
        cluster = self.cluster
        index = 0 if self.clients_on(0) >= self.clients_on(1) else 1
        victim = cluster.gateways[index]
        on_it = [b for b in [*self.user_bots, *self.astrologer_bots] if b.link is not None and b.gateway == index]
        checks_before, resumed_before = self.ledger.resume_checks, self.ledger.resumed
        missing_before = len(self.ledger.missing)
        cluster.kill(victim)
        killed_at = time.monotonic()
        # Every client of the dead gateway reconnects to the other one.
        while time.monotonic() - killed_at < 20:
            if all(b.link is not None and b.gateway != index for b in on_it if not self.stop.is_set()):
                break
            await asyncio.sleep(0.05)
        moved_s = time.monotonic() - killed_at
        moved = sum(1 for b in on_it if b.link is not None and b.gateway != index)
        result.figures.update(
            victim=victim.name,
            clients_on_victim=len(on_it),
            reconnected=moved,
            reconnect_all_s=round(moved_s, 2),
            resume_checks=self.ledger.resume_checks - checks_before,
            resumed_same_request=self.ledger.resumed - resumed_before,
            not_resumed=len(self.ledger.missing) - missing_before,
        )
        if moved < len(on_it):
            result.problems.append(f"{len(on_it) - moved} clients did not reconnect within 20 s")
        log(f"  {victim.name} killed with {len(on_it)} clients; {moved} reconnected in {moved_s:.2f} s; "
            f"{result.figures['resumed_same_request']}/{result.figures['resume_checks']} resumed their request")
        cluster.spawn(victim)
        await cluster.wait_up(victim)

    async def _lines(self) -> dict[str, list[str]]:
        redis = self.cluster.redis
        assert redis is not None
        names = ["general", *(a.id for a in self.astrologers)]
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.zrange(self.cluster.keys.m(f"line:{name}"), 0, -1)
        replies = await pipe.execute()
        return {name: [m.decode() for m in members] for name, members in zip(names, replies)}

    async def redis_restart(self, result: FaultResult) -> None:
        cluster = self.cluster
        assert cluster.redis is not None and cluster.pool is not None
        before = await self._lines()
        cluster.servers.stop_redis()
        stopped_at = time.monotonic()
        self.data_losses.append(datetime.now(timezone.utc))
        cluster.servers.start_redis()
        keys_after_start: int | None = None
        for _ in range(3):  # the first command may meet the connection the old server closed
            try:
                keys_after_start = int(await cluster.redis.dbsize())
                break
            except Exception:
                await asyncio.sleep(0.01)
        rebuilt_s = None
        while time.monotonic() - stopped_at < 20:
            if await cluster.redis_alive():
                rebuilt_s = time.monotonic() - stopped_at
                break
            await asyncio.sleep(POLL_S)
        after = await self._lines()
        waiting = [rid for line in before.values() for rid in line]
        pipe = cluster.redis.pipeline(transaction=False)
        for rid in waiting:
            pipe.exists(cluster.keys.request(rid))
        present = dict(zip(waiting, await pipe.execute()))
        # Order: the requests waiting both before and after keep their order in each line.
        out_of_order = 0
        for name, old in before.items():
            kept = set(after.get(name, ()))
            old_order = [rid for rid in old if rid in kept]
            new_order = [rid for rid in after.get(name, ()) if rid in set(old_order)]
            if old_order != new_order:
                out_of_order += 1
        await asyncio.sleep(1.5)
        rows = await cluster.pool.fetch(
            "SELECT id::text AS id, state FROM requests WHERE id = ANY($1::uuid[])", waiting
        )
        state = {r["id"]: r["state"] for r in rows}
        # Open in PostgreSQL yet gone from the rebuilt live state: its place was lost.
        # (Not rebuilt at all is a failure of its own, reported below.)
        vanished = [
            rid for rid in waiting if rebuilt_s is not None and state.get(rid) == "open" and not present[rid]
        ]
        never_persisted = [rid for rid in waiting if rid not in state]
        self.lost_places.update(vanished)
        self.unacked_lost += len([rid for rid in never_persisted if rid not in self.ledger.acked_requests])
        self.lost.update(rid for rid in never_persisted if rid in self.ledger.acked_requests)
        result.figures.update(
            keys_after_restart=keys_after_start,
            rebuilt_s=None if rebuilt_s is None else round(rebuilt_s, 3),
            waiting_before=len(waiting),
            lines_out_of_order=out_of_order,
            vanished_from_lines=len(vanished),
            never_persisted=len(never_persisted),
        )
        if rebuilt_s is None:
            result.problems.append("live state not rebuilt within 20 s")
        if out_of_order:
            result.problems.append(f"{out_of_order} lines changed order")
        log(f"  Redis restarted with {keys_after_start} keys; rebuilt after {result.figures['rebuilt_s']} s; "
            f"{len(waiting)} were waiting, {len(vanished)} vanished, {len(never_persisted)} never persisted, "
            f"{out_of_order} lines out of order")

    async def _probe(self, timeout_s: float) -> float | None:
        """Seconds until a fresh client gets a request acknowledged (and cancels it)."""
        account = self.probe
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                link, state = await open_link(self.cluster.gateways[0].ws_url, account.token)
            except Dropped:
                await asyncio.sleep(0.2)
                continue
            try:
                if state.get("request"):
                    await link.call({"type": "cancel", "request_id": state["request"]["request_id"]}, 5)
                reply = await link.call({"type": "request", "kind": "chat", "astrologer_id": None}, timeout_s)
                if reply["type"] == "ack":
                    took = time.monotonic() - started
                    await link.call({"type": "cancel", "request_id": reply["request_id"]}, 5)
                    return took
            except (Dropped, NoAck):
                pass
            finally:
                await link.close()
            await asyncio.sleep(0.2)
        return None

    async def pg_stop(self, result: FaultResult) -> None:
        cluster = self.cluster
        cluster.servers.stop_postgres()
        stopped_at = time.monotonic()
        codes: dict[str, int] = {}
        while time.monotonic() - stopped_at < self.config.pg_down_s:
            for code in await asyncio.gather(*(cluster.readyz(g, 3.0) for g in cluster.gateways)):
                codes[str(code)] = codes.get(str(code), 0) + 1
            await asyncio.sleep(0.5)
        down_s = time.monotonic() - stopped_at
        cluster.servers.start_postgres()
        started_at = time.monotonic()
        ready_s = None
        while time.monotonic() - started_at < 30:
            if all(c == 200 for c in await asyncio.gather(*(cluster.readyz(g) for g in cluster.gateways))):
                ready_s = time.monotonic() - started_at
                break
            await asyncio.sleep(0.1)
        probe_s = await self._probe(30)
        caught_up_s = time.monotonic() - started_at if probe_s is not None else None
        outbox = await self._outbox_len()
        result.figures.update(
            mode="stopped (fast shutdown), not SIGSTOP",
            down_s=round(down_s, 2),
            readyz_during=codes,
            readyz_200_after_s=None if ready_s is None else round(ready_s, 2),
            caught_up_after_s=None if caught_up_s is None else round(caught_up_s, 2),
            outbox_after=outbox,
        )
        if "503" not in codes:
            result.problems.append(f"/readyz never answered 503 while PostgreSQL was down: {codes}")
        if set(codes) - {"503"}:
            result.problems.append(f"/readyz answered other than 503 while PostgreSQL was down: {codes}")
        if caught_up_s is None:
            result.problems.append("no request acknowledged within 30 s of PostgreSQL's return")
        log(f"  PostgreSQL down {down_s:.1f} s; /readyz {codes}; ready again after {ready_s and round(ready_s, 2)} s;"
            f" a new request acked after {caught_up_s and round(caught_up_s, 2)} s")

    async def _outbox_len(self) -> int | None:
        assert self.cluster.redis is not None
        try:
            return int(await self.cluster.redis.xlen(self.cluster.keys.outbox))
        except Exception:
            return None

    async def redis_pause(self, result: FaultResult) -> None:
        cluster = self.cluster
        pid = cluster.servers.redis_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        codes: dict[str, int] = {}
        try:
            while time.monotonic() - paused_at < self.config.redis_pause_s - 0.5:
                for code in await asyncio.gather(*(cluster.readyz(g, 2.0) for g in cluster.gateways)):
                    codes[str(code)] = codes.get(str(code), 0) + 1
                await asyncio.sleep(0.3)
            left_s = self.config.redis_pause_s - (time.monotonic() - paused_at)
            if left_s > 0:
                await asyncio.sleep(left_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        probe_s = await self._probe(30)
        recovered_s = time.monotonic() - resumed_at if probe_s is not None else None
        result.figures.update(
            paused_s=round(resumed_at - paused_at, 2),
            readyz_during=codes,
            request_acked_after_s=None if recovered_s is None else round(recovered_s, 2),
        )
        if recovered_s is None:
            result.problems.append("no request acknowledged within 30 s of Redis' SIGCONT")
        log(f"  Redis paused {resumed_at - paused_at:.1f} s; /readyz {codes}; a new request acked "
            f"{recovered_s and round(recovered_s, 2)} s after SIGCONT")

    # -- the whole run -------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        await self.cluster.start()
        log(f"stores, 2 gateways and 2 matchers up after {time.monotonic() - started:.1f} s; work dir "
            f"{self.cluster.work_dir}")
        await self.make_accounts()
        probe_id = str(uuid.uuid4())
        assert self.cluster.pool is not None
        await self.cluster.pool.execute(
            "INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, 'probe', 'user', 'x')",
            probe_id, f"probe-{probe_id[:8]}@chaos.test",
        )
        self.probe = Account(probe_id, self._token(probe_id, "user"))
        self.start_load()
        log(f"load running: {len(self.users)} users, {len(self.astrologers)} astrologers")
        await asyncio.sleep(self.config.calm_s)
        plan = [(r, kind) for r in range(1, self.config.rounds + 1) for kind in self.config.faults]
        for round_no, kind in plan:
            in_flight = await self.cluster.open_requests()
            result = FaultResult(kind, round_no, in_flight)
            log(f"fault {kind} (round {round_no}), {in_flight} requests open")
            try:
                await getattr(self, kind)(result)
            except Exception as exc:  # a fault that could not be carried out is a finding too
                result.problems.append(f"{kind} failed: {exc!r}")
            await self.after_fault(result)
            self.results.append(result)
            if result.problems:
                log(f"  PROBLEMS: {result.problems}")
            await asyncio.sleep(self.config.calm_s)
        log("winding down")
        await self.stop_load()
        wind = await self.wind_down()
        found = await self.check_record(final=True)
        self._count_new(found)
        figures = self.figures(found, wind, time.monotonic() - started)
        figures.update(self.explain(found))
        return figures

    def explain(self, found: Violations) -> dict[str, Any]:
        """How the requests a client did not find on its return had ended, and
        which re-offers after a decline span a Redis data loss."""
        record = self.last_record
        by_id = {str(r["id"]): r for r in record.requests}
        away: dict[str, int] = {}
        for request_id, _who in self.ledger.missing:
            r = by_id.get(request_id)
            key = "missing" if r is None else f"{r['state']}/{r['reason'] or '-'}"
            away[key] = away.get(key, 0) + 1
        offers: dict[tuple[str, str], list[Any]] = {}
        for o in record.offers:
            offers.setdefault((str(o["request_id"]), str(o["astrologer_id"])), []).append(o)
        across = 0
        for pair in found.reoffered:
            spans = sorted(offers.get(pair, []), key=lambda o: o["created_at"])
            for earlier, later in zip(spans, spans[1:]):
                if earlier["outcome"] in ("declined", "expired") and any(
                    (earlier["answered_at"] or earlier["created_at"]) <= t <= later["created_at"]
                    for t in self.data_losses
                ):
                    across += 1
                    break
        return {"not_resumed_because": away, "reoffered_across_redis_data_loss": across}

    async def wind_down(self) -> dict[str, Any]:
        """Ends everything still open, the way the clients themselves would."""
        url = self.cluster.gateways[0].ws_url
        failures = 0

        async def finish(account: Account, role: str) -> None:
            nonlocal failures
            for _ in range(5):
                try:
                    link, state = await open_link(url, account.token)
                except Dropped:
                    await asyncio.sleep(0.5)
                    continue
                try:
                    if role == "user":
                        if state.get("request"):
                            await link.call({"type": "cancel", "request_id": state["request"]["request_id"]}, 10)
                        if state.get("session"):
                            await link.call({"type": "end", "session_id": state["session"]["session_id"]}, 10)
                    else:
                        for offer in state.get("offers") or []:
                            await link.call({"type": "decline", "offer_id": offer["offer_id"]}, 10)
                        for session in state.get("sessions") or []:
                            await link.call({"type": "end", "session_id": session["session_id"]}, 10)
                        await link.call({"type": "status", "status": "offline"}, 10)
                    return
                except (Dropped, NoAck):
                    await asyncio.sleep(0.5)
                finally:
                    await link.close()
            failures += 1

        await asyncio.gather(*(finish(u, "user") for u in self.users))
        await asyncio.gather(*(finish(a, "astrologer") for a in self.astrologers))
        assert self.cluster.pool is not None
        deadline = time.monotonic() + 30
        open_left = -1
        while time.monotonic() < deadline:
            open_left = int(
                await self.cluster.pool.fetchval(
                    "SELECT (SELECT count(*) FROM requests WHERE state = 'open')"
                    " + (SELECT count(*) FROM sessions WHERE ended_at IS NULL)"
                    " + (SELECT count(*) FROM offers WHERE outcome IS NULL)"
                )
            )
            if open_left == 0:
                break
            await asyncio.sleep(0.2)
        return {"wind_down_failures": failures, "open_after_wind_down": open_left}

    def figures(self, found: Violations, wind: dict[str, Any], duration_s: float) -> dict[str, Any]:
        failovers = [
            r.figures[key]
            for r in self.results
            for key in ("failover_s", "takeover_s")
            if r.figures.get(key) is not None
        ]
        kills = [r.figures["failover_s"] for r in self.results if r.figures.get("failover_s") is not None]
        by_kind: dict[str, int] = {}
        for r in self.results:
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        counts = found.counts()
        lost = len(self.lost) + len(self.lost_places) + counts["not_terminal"]
        figures: dict[str, Any] = {
            "faults_injected": len(self.results),
            "faults": by_kind,
            "users": self.config.users,
            "astrologers": self.config.astrologers,
            "requests_acknowledged": len(self.ledger.acked_requests),
            "sessions_acknowledged": len(self.ledger.acked_sessions),
            "requests_in_flight_at_faults": sum(max(0, r.in_flight) for r in self.results),
            "requests_lost": lost,
            "acked_requests_missing_from_postgresql": len(self.lost),
            "acked_sessions_missing_from_postgresql": len(self.lost_sessions),
            "places_lost": len(self.lost_places),
            "requests_not_terminal_at_end": counts["not_terminal"],
            "unacked_changes_lost_with_redis": self.unacked_lost,
            "double_assignments": len(self.seen.get("double_assigned", ())),
            "assignment_mismatches": len(self.seen.get("assignment_mismatch", ())),
            "capacity_violations": sum(n for _, n in self.seen.get("capacity_violations", ())),
            "oldest_first_violations": len(self.seen.get("passed_over", ())),
            "user_overlaps": len(self.seen.get("user_overlaps", ())),
            "bad_terminal_states": len(self.seen.get("bad_terminal", ())),
            "open_offers_at_end": counts["open_offers"],
            "reoffered_after_decline": len(self.seen.get("reoffered", ())),
            "failover_p50_s": percentile(kills, 0.5),
            "failover_max_s": max(kills) if kills else None,
            "takeover_all_p50_s": percentile(failovers, 0.5),
            "takeover_all_max_s": max(failovers) if failovers else None,
            "lease_s": self.config.lease_s,
            "reconnects": self.ledger.reconnects,
            "resume_checks": self.ledger.resume_checks,
            "resumed_same_request": self.ledger.resumed,
            "connect_failures": self.ledger.connect_failures,
            "acks_timed_out": self.ledger.no_ack,
            "client_errors": dict(sorted(self.ledger.errors.items())),
            **wind,
            "interventions": self.interventions,
            "log_errors": self.log_errors(),
            "per_fault": [
                {"fault": r.kind, "round": r.round, "in_flight": r.in_flight, "ok": r.ok, **r.figures,
                 **({"problems": r.problems} if r.problems else {})}
                for r in self.results
            ],
            "duration_s": round(duration_s, 1),
        }
        problems = [p for r in self.results for p in r.problems]
        for name in ("requests_lost", "acked_sessions_missing_from_postgresql", "double_assignments",
                     "assignment_mismatches", "capacity_violations", "oldest_first_violations",
                     "user_overlaps", "bad_terminal_states", "open_offers_at_end"):
            if figures[name]:
                problems.append(f"{name} = {figures[name]}")
        if wind["open_after_wind_down"]:
            problems.append(f"{wind['open_after_wind_down']} requests/sessions/offers still open after the wind-down")
        figures["problems"] = problems
        figures["observations"] = self.observations(figures)
        figures["ok"] = not problems
        return figures

    def observations(self, figures: dict[str, Any]) -> list[str]:
        """Deviations that break no promise of SPEC §6 but are worth knowing."""
        seen = []
        for r in self.results:
            codes = r.figures.get("readyz_during") or {}
            if r.kind == "redis_pause" and set(codes) - {"503"}:
                seen.append(f"/readyz while Redis was paused (r{r.round}): {codes} (a stalled Redis gets no 503 within the probe timeout)")
        if figures["reoffered_after_decline"]:
            seen.append(
                f"{figures['reoffered_after_decline']} requests offered again to an astrologer who had"
                " declined or let them expire (SPEC §5)"
            )
        noisy = {name: n for name, n in figures["log_errors"].items() if n}
        if noisy:
            seen.append(f"error lines in process logs: {noisy}")
        return seen

    def log_errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for proc in [*self.cluster.gateways, *self.cluster.matchers]:
            try:
                text = proc.log_path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            counts[proc.name] = sum(
                1 for line in text.splitlines() if " ERROR " in line or line.startswith(("ERROR:", "CRITICAL"))
            )
        return counts


# ---- output ----------------------------------------------------------------------------


def render(figures: dict[str, Any]) -> str:
    def s(value: Any) -> str:
        return "-" if value is None else f"{value:.3f} s" if isinstance(value, float) else str(value)

    lines = [
        "astroq chaos run",
        f"  faults injected            {figures['faults_injected']}  {figures['faults']}",
        f"  load                       {figures['users']} users, {figures['astrologers']} astrologers",
        f"  requests acknowledged      {figures['requests_acknowledged']}"
        f" (sessions {figures['sessions_acknowledged']})",
        f"  requests in flight         {figures['requests_in_flight_at_faults']} (open at the faults, summed)",
        f"  requests lost              {figures['requests_lost']}"
        f" (acked but missing {figures['acked_requests_missing_from_postgresql']},"
        f" places lost {figures['places_lost']}, open at end {figures['requests_not_terminal_at_end']})",
        f"  double assignments         {figures['double_assignments']}"
        f" (mismatches {figures['assignment_mismatches']})",
        f"  capacity violations        {figures['capacity_violations']}",
        f"  oldest-first violations    {figures['oldest_first_violations']}",
        f"  user overlaps              {figures['user_overlaps']}",
        f"  failover time              p50 {s(figures['failover_p50_s'])}, max {s(figures['failover_max_s'])}"
        f" (kill -9; lease {figures['lease_s']} s)",
        f"  takeover incl. pauses      p50 {s(figures['takeover_all_p50_s'])},"
        f" max {s(figures['takeover_all_max_s'])}",
        f"  resumes                    {figures['resumed_same_request']}/{figures['resume_checks']}"
        f" same request_id after {figures['reconnects']} reconnects",
        f"  unacked changes lost       {figures['unacked_changes_lost_with_redis']}"
        " (applied in Redis, never persisted or acknowledged)",
        f"  re-offered after decline   {figures['reoffered_after_decline']}"
        f" ({figures.get('reoffered_across_redis_data_loss')} across a Redis data loss)",
        f"  not resumed, ended while away  {figures.get('not_resumed_because')}",
        f"  acks timed out             {figures['acks_timed_out']}; client errors {figures['client_errors']}",
        f"  interventions              {len(figures['interventions'])} {figures['interventions']}",
        f"  error lines in logs        {figures['log_errors']}",
        f"  duration                   {figures['duration_s']} s",
        "  per fault:",
    ]
    for fault in figures["per_fault"]:
        details = {k: v for k, v in fault.items() if k not in ("fault", "round", "ok", "problems")}
        lines.append(f"    {'ok  ' if fault['ok'] else 'FAIL'} {fault['fault']:<14} r{fault['round']} {details}")
        for problem in fault.get("problems", []):
            lines.append(f"         ! {problem}")
    for note in figures["observations"]:
        lines.append(f"  note: {note}")
    lines.append("  result: " + ("OK" if figures["ok"] else "FAILED: " + "; ".join(figures["problems"])))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: one round, fewer clients")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    parser.add_argument("--users", type=int)
    parser.add_argument("--astrologers", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--faults", help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (process logs) afterwards")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    for name in ("users", "astrologers", "rounds"):
        if getattr(args, name) is not None:
            size[name] = max(1, getattr(args, name))
    faults = FAULTS
    if args.faults:
        faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        unknown = set(faults) - set(FAULTS)
        if unknown:
            parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return Config(seed=args.seed, faults=faults, keep=args.keep, **size), args.json  # type: ignore[arg-type]


async def _main(config: Config, cluster: Cluster) -> dict[str, Any]:
    chaos = Chaos(config, cluster)
    try:
        return await chaos.run()
    finally:
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="astroq-chaos-"))
    cluster = Cluster(config, work_dir)
    figures: dict[str, Any] | None = None
    try:
        cluster.start_stores()
        figures = asyncio.run(_main(config, cluster))
    finally:
        cluster.servers.stop()
        if figures is not None and figures["ok"] and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            log(f"logs kept in {work_dir}")
    print(render(figures))
    if as_json:
        print(json.dumps(figures, default=str))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
