"""The load generator: `python -m bench.load` reads one job (JSON) on stdin and
prints its result (JSON) on stdout. It runs in its own process, on asyncio with
uvloop, and drives real accounts over real WebSockets (websockets' sans-I/O
client protocol on an asyncio Protocol, compression off, as a lean app would).

Jobs:
- `echo`: pipelined frames against the bare echo server (the ceiling);
- `match`: complete match cycles, closed loop (the highest rate), then paced at
  given fractions of it (latency);
- `sockets`: authenticated idle sockets held by one gateway, its RSS per socket,
  then fan-out: W of them wait in line while matching runs, and how stale the
  position each one sees gets.

Time stamps: latencies use the monotonic clock of this process; staleness
compares this process's wall clock with the times PostgreSQL recorded (which
come from Redis' clock, on the same machine).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import uvloop
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench.limits import cpu_seconds, raise_nofile, rss_kib
from server.auth import Tokens, TokenType
from server import gc_pauses
from server.gc_pauses import short_gc_pauses

CYCLE_TIMEOUT_S = 15.0
CONNECT_CONCURRENCY = 200
JOIN_IN_FLIGHT = 100
LOCAL_ADDRESSES = 8  # spread sockets over 127.0.0.2.. so ephemeral ports never run out

REQUEST = orjson.dumps({"type": "request", "kind": "chat", "astrologer_id": None}).decode()


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def percentiles(samples: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p95/p99 (nearest rank) in ms when the samples are seconds."""
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * scale, 3)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "n": len(ordered)}


@dataclass
class Frames:
    """Frames in and out of this process, all sockets together."""

    sent: int = 0
    received: int = 0

    def total(self) -> int:
        return self.sent + self.received


class Bot(asyncio.Protocol):
    """One socket on websockets' sans-I/O client protocol.

    Frames are parsed and handed to the handler inside `data_received`: no task,
    queue or future per frame, as the asyncio client has. The load generator
    shares the two cores with what it measures, so its own cost per frame is kept
    low; the echo ceiling is driven by the same client.
    """

    def __init__(
        self, account_id: str, role: str, ws: ClientProtocol, frames: Frames, *, awaits_ready: bool = True
    ) -> None:
        self.id = account_id
        self.role = role
        self.ws = ws
        self.frames = frames
        self.handler: Callable[[Bot, Any, bytes], None] | None = None
        self.parse = True
        self.state: Any = None
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[bytes | None] = loop.create_future()  # the first frame
        self.lost: asyncio.Future[None] = loop.create_future()
        self.awaits_ready = awaits_ready  # open once the first frame (`ready`) came, not the handshake

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Response):
                if ws.handshake_exc is not None:
                    self._fail_open(ws.handshake_exc)
                elif not self.awaits_ready:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                data = bytes(event.data)
                self.frames.received += 1
                if not self.opened.done():
                    self.opened.set_result(data)
                elif self.handler is not None:
                    self.handler(self, orjson.loads(data) if self.parse else None, data)
        self._flush()  # pongs and the reply to a close

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_open(exc or ConnectionError("closed before it opened"))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- use ----------------------------------------------------------------------
    def send(self, text: str) -> None:
        if self.lost.done() or self.ws.state is not State.OPEN:
            raise ConnectionClosedError(None, None)
        self.frames.sent += 1
        self.ws.send_text(text.encode())
        self._flush()

    def listen(self, handler: Callable[["Bot", Any, bytes], None], parse: bool = True) -> None:
        """Each frame from now on goes to `handler(bot, frame, raw)`; `frame` is the parsed
        JSON, or None without `parse` (the echo only counts them)."""
        self.handler = handler
        self.parse = parse

    async def close(self) -> None:
        if not self.lost.done() and self.ws.state is State.OPEN:
            self.ws.send_close()
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), 5)
        except asyncio.TimeoutError:
            pass
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # the protocol half-closes after a close

    def _fail_open(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)


async def open_bot(
    url: str, account_id: str, role: str, frames: Frames, token: str | None = None,
    local_addr: tuple[str, int] | None = None,
) -> Bot:
    """Connects; with a token (Authorization on the handshake), waits for `ready`."""
    uri = parse_uri(url)
    ws = ClientProtocol(uri)
    request = ws.connect()
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token}"
    ws.send_request(request)
    bot = Bot(account_id, role, ws, frames, awaits_ready=token is not None)
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: bot, uri.host, uri.port, local_addr=local_addr)
    try:
        first = await asyncio.wait_for(asyncio.shield(bot.opened), 30)
    except BaseException:
        await bot.close()
        raise
    if token is not None and (first is None or orjson.loads(first).get("type") != "ready"):
        await bot.close()
        raise RuntimeError(f"expected ready, got {first!r}")
    return bot


async def open_bots(
    ws_urls: list[str], tokens: Tokens, accounts: list[tuple[str, str]], frames: Frames, spread: bool = False
) -> list[Bot]:
    """Connects and authenticates every account (Authorization on the handshake), `ready` read;
    with several gateways, the accounts take turns among them."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    bots: list[Bot | None] = [None] * len(accounts)

    async def one(index: int, account_id: str, role: str) -> None:
        token = tokens.issue(account_id, role, TokenType.ACCESS).token
        local_addr = (f"127.0.0.{2 + index % LOCAL_ADDRESSES}", 0) if spread else None
        async with gate:
            for attempt in range(5):
                try:
                    bots[index] = await open_bot(
                        ws_urls[index % len(ws_urls)], account_id, role, frames, token, local_addr
                    )
                    break
                except (OSError, ConnectionClosed, InvalidHandshake, InvalidMessage, asyncio.TimeoutError) as exc:
                    if attempt == 4:
                        raise
                    log(f"connect retry {attempt + 1}: {exc!r}")
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(one(i, aid, role) for i, (aid, role) in enumerate(accounts)))
    return [bot for bot in bots if bot is not None]


async def call(bot: Bot, frame: dict[str, Any], replies: dict[str, asyncio.Future[dict[str, Any]]]) -> dict[str, Any]:
    """Sends a frame with a ref; waits for its ack/error (the bot's handler resolves `replies`)."""
    ref = f"c{id(frame)}{time.perf_counter_ns()}"
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    replies[ref] = future
    bot.send(orjson.dumps({**frame, "ref": ref}).decode())
    return await asyncio.wait_for(future, CYCLE_TIMEOUT_S)


class CpuMeter:
    """CPU used by the service's processes (and this one) over a window, as % of one core;
    a name with several processes (gateways) counts them all."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        import os

        self.pids = {**pids, "load": [os.getpid()]}
        self.start_cpu: dict[str, float] = {}
        self.start_wall = 0.0
        self.start_machine = (0, 0)

    @staticmethod
    def _machine() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    def begin(self) -> None:
        self.start_cpu = {name: self._cpu(pid) for name, pid in self.pids.items()}
        self.start_wall = time.monotonic()
        self.start_machine = self._machine()

    def _cpu(self, pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                total += cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                pass
        return total

    def end(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.start_wall)
        busy, total = self._machine()
        used = {
            name: round(100 * (self._cpu(pid) - self.start_cpu[name]) / wall, 1)
            for name, pid in self.pids.items()
        }
        d_busy, d_total = busy - self.start_machine[0], total - self.start_machine[1]
        used["machine"] = round(100 * d_busy / max(1, d_total), 1)
        return used


# ---- echo ----------------------------------------------------------------------------


async def run_echo(job: dict[str, Any]) -> dict[str, Any]:
    """Pipelined frames against the bare echo server; counts frames in + out at the server."""
    url, sockets, window, duration = job["url"], job["sockets"], job["window"], job["duration_s"]
    payload = orjson.dumps(
        {"type": "offer", "offer_id": "0" * 36, "request_id": "1" * 36, "kind": "chat",
         "direct": False, "user": {"id": "2" * 36, "name": "u1"}, "expires_in": 15.0}
    ).decode()
    counted = {"echoed": 0}
    recording = {"on": False}
    stopping = {"on": False}
    frames = Frames()

    def echoed(bot: Bot, frame: Any, raw: bytes) -> None:
        if recording["on"]:
            counted["echoed"] += 1
        if not stopping["on"]:
            bot.send(payload)  # the echo returned this one's credit

    bots = await asyncio.gather(*(open_bot(url, f"echo-{i}", "echo", frames) for i in range(sockets)))
    for bot in bots:
        bot.listen(echoed, parse=False)
        for _ in range(window):
            bot.send(payload)
    await asyncio.sleep(job.get("warmup_s", 1.0))
    recording["on"] = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    recording["on"] = False
    elapsed = time.perf_counter() - started
    stopping["on"] = True
    await asyncio.gather(*(bot.close() for bot in bots))
    echoes = counted["echoed"] / elapsed
    return {"echoes_per_s": round(echoes), "frames_per_s": round(2 * echoes), "sockets": sockets, "window": window}


# ---- match cycles -------------------------------------------------------------------


@dataclass
class MatchState:
    sent_at: dict[str, float] = field(default_factory=dict)  # user id -> its request frame's time
    to_ack: list[float] = field(default_factory=list)  # the request is in PostgreSQL
    to_offer: list[float] = field(default_factory=list)
    to_assigned: list[float] = field(default_factory=list)
    recording: bool = False
    cycles: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    replies: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class UserState:
    assigned: asyncio.Future[tuple[str, float]] | None = None
    ended: asyncio.Future[None] | None = None
    last: deque[str] = field(default_factory=lambda: deque(maxlen=6))  # for error reports


async def run_match(job: dict[str, Any]) -> dict[str, Any]:
    raise_nofile()
    tokens = Tokens(job["secret"], 3600, 3600)
    frames = Frames()
    state = MatchState()
    loop = asyncio.get_running_loop()
    meter = CpuMeter(job["pids"])

    def on_user(bot: Bot, frame: dict[str, Any], raw: Any) -> None:
        kind = frame["type"]
        us: UserState = bot.state
        us.last.append(kind)
        if kind == "ack":
            if state.recording and "request_id" in frame:
                sent = state.sent_at.get(bot.id)
                if sent is not None:
                    state.to_ack.append(time.perf_counter() - sent)
        elif kind == "assigned":
            if us.assigned is not None and not us.assigned.done():
                us.assigned.set_result((frame["session_id"], time.perf_counter()))
        elif kind == "session_ended":
            if us.ended is not None and not us.ended.done():
                us.ended.set_result(None)
        elif kind == "error":
            state.errors[frame["code"]] += 1
            for future in (us.assigned, us.ended):
                if future is not None and not future.done():
                    future.set_exception(RuntimeError(frame["code"]))

    def on_astrologer(bot: Bot, frame: dict[str, Any], raw: Any) -> None:
        kind = frame["type"]
        if kind == "offer":
            if state.recording:
                sent = state.sent_at.get(frame["user"]["id"])
                if sent is not None:
                    state.to_offer.append(time.perf_counter() - sent)
            bot.send('{"type":"accept","offer_id":"%s"}' % frame["offer_id"])
        elif kind in ("ack", "error"):
            if kind == "error":
                state.errors[frame["code"]] += 1
            future = state.replies.pop(frame.get("ref") or "", None)
            if future is not None and not future.done():
                future.set_result(frame)

    log(f"connecting {len(job['astrologers'])} astrologers and {len(job['users'])} users")
    astrologers = await open_bots(job["ws_urls"], tokens, [(a, "astrologer") for a in job["astrologers"]], frames)
    users = await open_bots(job["ws_urls"], tokens, [(u, "user") for u in job["users"]], frames)
    for bot in astrologers:
        bot.listen(on_astrologer)
    for bot in users:
        bot.state = UserState()
        bot.listen(on_user)
    for reply in await asyncio.gather(
        *(call(bot, {"type": "status", "status": "online"}, state.replies) for bot in astrologers)
    ):
        if reply["type"] != "ack":
            raise RuntimeError(f"status online refused: {reply}")

    broken: set[str] = set()

    async def cycle(bot: Bot) -> bool:
        us: UserState = bot.state
        us.assigned = loop.create_future()
        us.ended = loop.create_future()
        started = time.perf_counter()
        state.sent_at[bot.id] = started
        stage = "assigned"
        try:
            bot.send(REQUEST)
            session_id, assigned_at = await asyncio.wait_for(us.assigned, CYCLE_TIMEOUT_S)
            if state.recording:
                state.to_assigned.append(assigned_at - started)
            stage = "session_ended"
            bot.send('{"type":"end","session_id":"%s"}' % session_id)
            await asyncio.wait_for(us.ended, CYCLE_TIMEOUT_S)
        except (asyncio.TimeoutError, RuntimeError, ConnectionClosed) as exc:
            state.errors[f"no {stage}: {type(exc).__name__} {exc}".strip()] += 1
            log(f"user {bot.id} got no {stage}: {exc!r}; frames it got last: {us.last}")
            broken.add(bot.id)
            return False
        finally:
            state.sent_at.pop(bot.id, None)
        return True

    # 1. Closed loop: every user runs cycles back to back; the rate it reaches is the highest.
    stop = asyncio.Event()
    window = {"open": False}

    async def closed(bot: Bot) -> None:
        while not stop.is_set() and bot.id not in broken:
            if await cycle(bot) and window["open"]:
                state.cycles += 1

    log("closed loop")
    tasks = [asyncio.create_task(closed(bot)) for bot in users]
    await asyncio.sleep(job["warmup_s"])
    gc_pauses.review()  # this process's own long pause, before the window
    frames_before = frames.total()
    meter.begin()
    window["open"] = state.recording = True
    started = time.perf_counter()
    await asyncio.sleep(job["duration_s"])
    window["open"] = state.recording = False
    elapsed = time.perf_counter() - started
    cpu_closed = meter.end()
    frames_closed = frames.total() - frames_before
    stop.set()
    await asyncio.gather(*tasks)
    max_rate = state.cycles / elapsed
    result: dict[str, Any] = {
        "users": len(users),
        "astrologers": len(astrologers),
        "gateways": len(job["ws_urls"]),
        "capacity": job["capacity"],
        "match_cycles_per_s": round(max_rate, 1),
        "gateway_frames_per_s": round(frames_closed / elapsed),
        "closed_loop_latency": {
            "request_to_ack_ms": percentiles(state.to_ack),
            "request_to_offer_ms": percentiles(state.to_offer),
            "request_to_assigned_ms": percentiles(state.to_assigned),
        },
        "cpu_closed": cpu_closed,
    }
    log(f"closed loop: {max_rate:.0f} cycles/s, {frames_closed / elapsed:.0f} frames/s")

    # 2. Paced: cycles start at a fixed rate (a fraction of the highest), latency recorded.
    paced: dict[str, Any] = {}
    steps = [(f"{round(f * 100)}", f * max_rate) for f in job["fractions"]]
    if job.get("floor_rate"):
        steps.append(("floor", float(job["floor_rate"])))
    for label, rate in steps:
        rate = max(1.0, rate)
        state.to_ack, state.to_offer, state.to_assigned = [], [], []
        idle = deque(bot for bot in users if bot.id not in broken)
        running: set[asyncio.Task[None]] = set()
        late = done = 0

        async def one(bot: Bot) -> None:
            nonlocal done
            if await cycle(bot):
                done += 1
                idle.append(bot)

        gc_pauses.review()  # this process's own long pause, before the window
        meter.begin()
        state.recording = True
        began = loop.time()
        launched = 0
        while (now := loop.time()) < began + job["paced_s"]:
            due = int((now - began) * rate) - launched
            for _ in range(due):
                launched += 1
                if idle:
                    task = asyncio.create_task(one(idle.popleft()))
                    running.add(task)
                    task.add_done_callback(running.discard)
                else:
                    late += 1
            await asyncio.sleep(0.001)
        state.recording = False
        paced_elapsed = loop.time() - began
        if running:
            await asyncio.gather(*list(running))
        paced[label] = {
            "target_per_s": round(rate, 1),
            "achieved_per_s": round(done / paced_elapsed, 1),
            "no_idle_user": late,
            "request_to_ack_ms": percentiles(state.to_ack),
            "request_to_offer_ms": percentiles(state.to_offer),
            "request_to_assigned_ms": percentiles(state.to_assigned),
            "cpu": meter.end(),
        }
        log(f"paced at {rate:.0f}/s: offer p50/p99 {paced[label]['request_to_offer_ms']['p50']}"
            f"/{paced[label]['request_to_offer_ms']['p99']} ms")
    result["paced"] = paced
    result["errors"] = dict(state.errors)

    # Leave cleanly: astrologers offline (no stale presence), sockets closed.
    await asyncio.gather(
        *(call(bot, {"type": "status", "status": "offline"}, state.replies) for bot in astrologers),
        return_exceptions=True,
    )
    await asyncio.gather(*(bot.close() for bot in users + astrologers))
    return result


# ---- idle sockets and fan-out ---------------------------------------------------------


@dataclass
class Waiter:
    """One waiting user's view: when it queued, and every position it was shown."""

    request_id: str | None = None
    seen: list[tuple[float, int]] = field(default_factory=list)  # (wall time, position)
    queued: asyncio.Future[None] | None = None
    offered: bool = False


async def run_sockets(job: dict[str, Any]) -> dict[str, Any]:
    limit = raise_nofile(job["idle"] + 4096)
    tokens = Tokens(job["secret"], 3600, 3600)
    frames = Frames()
    loop = asyncio.get_running_loop()
    (gateway_pid,) = job["pids"]["gateway"]  # one gateway process: its sockets and RSS
    result: dict[str, Any] = {"nofile_load_generator": limit}

    # 1. Idle sockets: RSS of the gateway before and after.
    rss_before = rss_kib(gateway_pid)
    started = time.perf_counter()
    idle = await open_bots([job["ws_url"]], tokens, [(u, "user") for u in job["idle_users"]], frames, spread=True)
    connect_s = time.perf_counter() - started
    await asyncio.sleep(job.get("settle_s", 2.0))
    rss_after = rss_kib(gateway_pid)
    result.update(
        {
            "idle_sockets": len(idle),
            "connect_s": round(connect_s, 2),
            "connects_per_s": round(len(idle) / connect_s),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_kib_per_socket": round((rss_after - rss_before) / max(1, len(idle)), 2),
        }
    )
    log(f"{len(idle)} idle sockets in {connect_s:.1f} s; gateway RSS {rss_before} -> {rss_after} KiB")

    # 2. Fan-out: W of them ask for an astrologer; the line forms; then matching runs.
    waiting = idle[: job["waiting"]]
    replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
    counted = {"users": 0, "astrologers": 0, "positions": 0, "on": False}

    def on_waiter(bot: Bot, frame: dict[str, Any], raw: Any) -> None:
        w: Waiter = bot.state
        kind = frame["type"]
        if counted["on"]:
            counted["users"] += 1
        if kind == "position" or kind == "queued":
            if kind == "position" and counted["on"]:
                counted["positions"] += 1
            w.seen.append((time.time(), frame["position"]))
            if kind == "queued" and w.queued is not None and not w.queued.done():
                w.queued.set_result(None)
        elif kind == "ack":
            w.request_id = frame.get("request_id")
        elif kind == "error" and w.queued is not None and not w.queued.done():
            w.queued.set_exception(RuntimeError(frame["code"]))

    holds: set[asyncio.Task[None]] = set()
    matched = {"n": 0}

    async def end_later(bot: Bot, session_id: str) -> None:
        await asyncio.sleep(job["hold_s"])
        try:
            bot.send('{"type":"end","session_id":"%s"}' % session_id)
        except ConnectionClosed:
            pass

    def on_astrologer(bot: Bot, frame: dict[str, Any], raw: Any) -> None:
        kind = frame["type"]
        if counted["on"]:
            counted["astrologers"] += 1
        if kind == "offer":
            bot.send('{"type":"accept","offer_id":"%s"}' % frame["offer_id"])
        elif kind == "assigned":
            if counted["on"]:
                matched["n"] += 1
            task = asyncio.create_task(end_later(bot, frame["session_id"]))
            holds.add(task)
            task.add_done_callback(holds.discard)
        elif kind in ("ack", "error"):
            future = replies.pop(frame.get("ref") or "", None)
            if future is not None and not future.done():
                future.set_result(frame)

    for bot in waiting:
        bot.state = Waiter()
        bot.listen(on_waiter)
    astrologers = await open_bots(
        [job["ws_url"]], tokens, [(a, "astrologer") for a in job["astrologers"]], frames
    )
    for bot in astrologers:
        bot.listen(on_astrologer)

    log(f"{len(waiting)} users join the line")
    # Paced, and never more than JOIN_IN_FLIGHT requests unanswered: the gateway's
    # Redis pool is bounded, and a join is not what this phase measures.
    began = loop.time()
    in_flight = asyncio.Semaphore(JOIN_IN_FLIGHT)

    async def join(bot: Bot) -> None:
        try:
            await asyncio.wait_for(bot.state.queued, 60)
        finally:
            in_flight.release()

    joins = []
    for index, bot in enumerate(waiting):
        await in_flight.acquire()
        bot.state.queued = loop.create_future()
        bot.send(REQUEST)
        joins.append(asyncio.create_task(join(bot)))
        ahead = began + (index + 1) / job["request_rate"] - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
    results = await asyncio.gather(*joins, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    result["join_s"] = round(loop.time() - began, 2)
    result["join_failed"] = len(failed)
    await asyncio.sleep(0.5)  # let the last positions pass settle
    # This process's own long collector pause (its heap grew by half while the
    # sockets opened) now, not in the window: late reads would count as stale.
    gc_pauses.review()

    meter = CpuMeter(job["pids"])
    meter.begin()
    counted["on"] = True
    window_start = time.time()
    await asyncio.gather(*(call(bot, {"type": "status", "status": "online"}, replies) for bot in astrologers))
    log("matching runs")
    await asyncio.sleep(job["duration_s"])
    window_end = time.time()
    counted["on"] = False
    cpu = meter.end()
    await asyncio.gather(
        *(call(bot, {"type": "status", "status": "offline"}, replies) for bot in astrologers),
        return_exceptions=True,
    )
    observed_until = time.time()
    elapsed = window_end - window_start
    result.update(
        {
            "waiting": len(waiting),
            "fanout_astrologers": len(astrologers),
            "matched_per_s": round(matched["n"] / elapsed, 1),
            "fanout_frames_per_s": round((counted["users"] + counted["astrologers"]) / elapsed),
            "position_frames_per_s": round(counted["positions"] / elapsed),
            "cpu_fanout": cpu,
        }
    )
    result.update(await staleness(job, waiting, window_start, observed_until))
    log(
        f"fan-out: {result['matched_per_s']} matched/s, {result['fanout_frames_per_s']} frames/s, "
        f"staleness p99 {result['position_staleness_p99_ms']} ms"
    )
    await asyncio.gather(*(bot.close() for bot in astrologers))
    for batch_start in range(0, len(idle), 1000):
        await asyncio.gather(*(bot.close() for bot in idle[batch_start : batch_start + 1000]))
    return result


async def staleness(
    job: dict[str, Any], waiting: list[Bot], window_start: float, observed_until: float
) -> dict[str, Any]:
    """How long each change of a user's true position went unshown (p99 over users and changes).

    The true position of a general request at time t is 1 + the requests ahead of it
    (smaller seq) not yet offered at t (no declines here, so none come back). Each
    offer of a request ahead changes it; the change is shown by the first `position`
    (or `queued`) frame with a value at or below the new one. A change never shown
    counts until the user's own offer (no positions are sent while under offer) or
    the end of the observation.
    """
    import asyncpg

    conn = await asyncpg.connect(job["database_url"])
    try:
        rows = await conn.fetch(
            "SELECT r.id::text AS id, r.seq, extract(epoch FROM r.created_at) AS created,"
            " extract(epoch FROM min(o.created_at)) AS offered"
            " FROM requests r LEFT JOIN offers o ON o.request_id = r.id"
            " WHERE r.astrologer_id IS NULL GROUP BY r.id ORDER BY r.seq"
        )
    finally:
        await conn.close()
    seqs = [r["seq"] for r in rows]
    offered = [float(r["offered"]) if r["offered"] is not None else math.inf for r in rows]
    by_id = {r["id"]: (i, float(r["created"])) for i, r in enumerate(rows)}
    # Offer times of the requests ahead, sorted, for each prefix of the line: built incrementally.
    sample_every = max(1, len(waiting) // job.get("staleness_sample", 1000))
    samples: list[float] = []
    never_shown = 0
    checked_users = 0
    sorted_ahead: list[float] = []
    picked = {bot.state.request_id: bot for i, bot in enumerate(waiting) if i % sample_every == 0}
    for index, row in enumerate(rows):
        bot = picked.get(row["id"])
        if bot is not None:
            checked_users += 1
            w: Waiter = bot.state
            created = by_id[row["id"]][1]
            own_offer = offered[index]
            horizon = min(own_offer, observed_until)
            changes = [t for t in sorted_ahead if created < t <= horizon]
            seen = w.seen
            j = 0
            unique = sorted(set(changes))
            for t in unique:
                true_position = 1 + len(sorted_ahead) - bisect.bisect_right(sorted_ahead, t)
                while j < len(seen) and seen[j][1] > true_position:
                    j += 1
                if j < len(seen):
                    shown_at = min(seen[j][0], horizon)
                else:
                    shown_at = horizon
                    never_shown += 1
                # Offers committed in the same millisecond are one change.
                samples.append(max(0.0, shown_at - t))
        bisect.insort(sorted_ahead, offered[index])
    stats = percentiles(samples)
    return {
        "position_staleness_ms": stats,
        "position_staleness_p99_ms": stats["p99"],
        "position_staleness_max_ms": round(max(samples) * 1000, 1) if samples else None,
        "staleness_users_checked": checked_users,
        "staleness_changes_checked": len(samples),
        "changes_never_shown": never_shown,
        "line_length": len(seqs),
    }


JOBS = {"echo": run_echo, "match": run_match, "sockets": run_sockets}


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    # The load generator holds as many sockets as the gateway: without this its
    # own collector pauses (seconds, at 30,000 sockets) would be measured as astroq's.
    async with short_gc_pauses():
        return await JOBS[job["kind"]](job)


def main() -> int:
    job = orjson.loads(sys.stdin.buffer.read())
    result = uvloop.run(run_job(job))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
