"""The WebSocket gateway (SPEC §4). Stateless: all state lives in Redis.

Each socket is a receiver plus a sender. The receiver parses frames; a frame
that changes state goes to its sender's own queue in Redis, and whichever
gateway holds that queue's lock applies the frames one at a time, in order
(one client's burst only ever delays that client). The ack and every other
frame reach the socket through Redis pub/sub, whichever process caused them.
The sender drains a bounded per-socket queue, so a client that stops reading
is closed instead of slowing anyone else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import asyncpg
import hiredis
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from matcher.journal import FANOUT_ACCOUNT, frame_message
from matcher.keys import Keys
from matcher.aio import REDIS_DOWN, STORES_DOWN, cancel_and_wait, log_failure, unless_cancelled
from matcher.stats import admin_stats
from matcher.store import Store
from server import db, metrics, protocol
from server.auth import Claims, Role, Tokens, TokenType
from server.errors import AstroqError, CloseCode, InvalidInput, InvalidToken, RateLimited, Unavailable
from server.settings import Settings
from server.wsprotocol import send_texts_of

log = logging.getLogger("astroq.gateway")

AUTH_TIMEOUT_S = 10.0
RATE_LIMIT_CLOSE_S = 5.0  # still over the rate after this long: close 1008
SEND_QUEUE_MAX = 1024  # frames waiting for a slow reader before it is closed (1013)
SEND_STALL_S = 5.0  # a socket that takes no frame for this long has stopped reading: 1013
STALL_SWEEP_S = 1.0  # how often stalled writes are looked for: a stall is seen within 5-6 s
QUEUE_LOCK_MS = 10_000  # a client queue's lock outlives a crashed holder by this much
ACK_WAIT_S = 5.0  # an ack not seen by then is given up (an error behind it then goes out)
HEARTBEAT_S = 1.0
HEARTBEAT_TTL_MS = 5_000  # a gateway silent for this long is dead: its sockets start their grace
# A socket opened while live state is being rebuilt (a matcher starting, or Redis
# after a data loss) waits this long for it before closing 1013.
LIVE_STATE_WAIT_S = 5.0


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(eq=False)
class Connection:
    ws: WebSocket
    account_id: str
    role: Role
    name: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    outbox: deque[str] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False  # frames that arrive before `ready` wait behind it
    early: list[str] = field(default_factory=list)
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    # When the frame being written now was handed to the socket (loop time), 0.0
    # between writes: the stall watchdog reads it, so a write needs no timer of its own.
    sending_since: float = 0.0
    # Writes several frames in one write (server/wsprotocol.py), when the server can.
    send_texts: Callable[[list[str]], bool] | None = None

    def __post_init__(self) -> None:
        self.send_texts = send_texts_of(self.ws.scope)

    def push(self, text: str) -> None:
        self.push_many([text])

    def push_many(self, texts: list[str]) -> None:
        """Frames for this socket, in order: written at once when it can take them (a
        fan-out batch's frames for it in one write), else queued for its sender."""
        if not self.ready:
            self.early.extend(texts)
            return
        if not self.outbox and not self.sending_since and self._write_now(texts):
            return
        if len(self.outbox) + len(texts) > SEND_QUEUE_MAX:
            # It stopped reading: close it rather than hold frames without bound.
            self.overflowed.set()
            return
        self.outbox.extend(texts)
        self.wakeup.set()

    def _write_now(self, texts: list[str]) -> bool:
        """Writes the frames in place, without waking the socket's sender, when the
        socket can take them (websockets' broadcast does the same): most frames go
        out so, and a task switch per frame was a tenth of the gateway's work.

        server/wsprotocol.py writes them all in one write, below ASGI; it declines
        while the transport is over its high-water mark, and then the frames are
        queued for the sender, which waits. Where the server lacks that extension,
        a lone frame goes through ASGI the same way: uvicorn's sans-I/O protocol
        waits only before it writes, so a send that would wait is closed unsent.
        A send that fails (the client has gone) is queued too, so that the sender
        fails the same way and the socket is closed as before."""
        if self.send_texts is not None:
            return self.send_texts(texts)
        if len(texts) != 1:
            return False
        send = self.ws.send_text(texts[0])
        try:
            send.send(None)
        except StopIteration:
            return True
        except Exception:
            return False
        send.close()
        return False

    async def room_to_answer(self) -> None:
        """Backpressure on the reader: a client that sends faster than it reads its
        answers is read more slowly, instead of overflowing its own send queue."""
        while len(self.outbox) >= SEND_QUEUE_MAX // 2:
            self.drained.clear()
            await self.drained.wait()

    def push_frame(self, frame: dict[str, Any]) -> None:
        self.push(orjson.dumps(frame).decode())

    def open_with(self, ready_frame: dict[str, Any]) -> None:
        self.ready = True
        early, self.early = self.early, []
        self.push_many([orjson.dumps(ready_frame).decode(), *early])


# Scripts wait for a batch in flight to return rather than go out on a connection of
# their own: under load the batches grow, and Redis and this process each make one
# read and one write per batch.
MAX_BATCHES_IN_FLIGHT = 2


class ScriptBatcher:
    """Sends the scripts that sockets call in one turn of the event loop as one pipeline.

    Each frame a client sends costs three scripts (enqueue, the action, next);
    awaited one by one, each pays redis-py's per-call overhead, a pooled connection
    and a round trip, and under load hundreds of sockets call at once. Gathered
    per turn of the loop, they go out in one write and come back in one read.
    Each caller still awaits its own result, so one client's frames stay in order
    (scripts of different clients were never ordered relative to each other), and
    a failure reaches the caller as the same exception a direct call would raise.

    The batch is packed by hiredis and its replies read from a pooled connection
    under one deadline for the whole batch: redis-py's pipeline would arm and
    cancel a timer for every reply, and build each command in Python, which made
    a script cost 2.4 times as much CPU here (bench: 18 against 7.7 µs).

    It stands in for the Redis client where matcher/store.py's Script uses one
    (`evalsha`, `script_load`); anything else goes straight through.
    """

    def __init__(self, redis: Redis, timeout_s: float = 10.0) -> None:
        self.redis = redis
        self.timeout_s = timeout_s  # a paused Redis fails the batch, as a socket timeout would
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)

    async def script_load(self, script: str) -> Any:
        return await self.redis.script_load(script)

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending and len(self._sending) < MAX_BATCHES_IN_FLIGHT:
            loop.call_soon(self._flush)
        self._pending.append((("EVALSHA", sha, numkeys, *args), future))
        return future

    def _flush(self) -> None:
        if not self._pending or len(self._sending) >= MAX_BATCHES_IN_FLIGHT:
            return  # a batch in flight takes the rest when it returns
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._flush()

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            results: list[Any] = []
            async with asyncio.timeout(self.timeout_s):
                await conn.send_packed_command(
                    b"".join(hiredis.pack_command(command) for command in commands), check_health=False
                )
                for _ in commands:
                    try:
                        results.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as error:  # one script's error; the rest still come
                        results.append(error)
            return results
        except BaseException:
            await conn.disconnect(nowait=True)  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(conn)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._exchange([command for command, _ in batch])
        except BaseException as exc:  # the whole batch failed (connection lost, cancelled)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def error_frame(error: AstroqError, ref: str | None) -> dict[str, Any]:
    metrics.ERRORS.labels(error.code).inc()
    return {"type": "error", "ref": ref, "code": error.code, "message": error.message}


class Gateway:
    def __init__(
        self, settings: Settings, redis: Redis, pool: asyncpg.Pool, tokens: Tokens
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.tokens = tokens
        self.keys = Keys(settings.redis_prefix)
        self.scripts = ScriptBatcher(redis)
        self.store = Store(self.scripts, self.keys)  # type: ignore[arg-type]
        self.id = uuid.uuid4().hex[:16]
        self._ops = itertools.count()
        self.accounts: dict[str, set[Connection]] = {}
        self.admins: set[Connection] = set()
        self.drainers: dict[str, asyncio.Task[None]] = {}
        self.pending_acks: dict[str, tuple[str, asyncio.Future[None]]] = {}  # op -> (account, waiter)
        self.last_unacked: dict[str, asyncio.Future[None]] = {}  # account -> its latest pending ack
        self._submitting: set[asyncio.Task[None]] = set()
        self._events_prefix = self.keys.events("").encode()
        self._admin_channel = self.keys.admin_events.encode()
        self._fanout_channel = self.keys.events(FANOUT_ACCOUNT).encode()
        self._pubsub = redis.pubsub()
        self._subscribing: dict[bytes, asyncio.Future[None]] = {}
        self._subscription_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        await self._pubsub.subscribe(self.keys.admin_events, self.keys.events(FANOUT_ACCOUNT))
        self._tasks = [
            asyncio.create_task(self._read_events(), name="gateway-events"),
            asyncio.create_task(self._heartbeat(), name="gateway-heartbeat"),
            asyncio.create_task(self._watch_stalled_sends(), name="gateway-stall-watch"),
        ]
        for task in self._tasks:
            task.add_done_callback(log_failure)

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self._submitting, *self.drainers.values()])
        await self._pubsub.aclose()

    # ---- pub/sub → sockets --------------------------------------------------------
    async def _read_events(self) -> None:
        while True:
            try:
                # Blocking (timeout None): no timer armed per message. A lost
                # connection still raises at once; stop() cancels the read.
                message = await self._pubsub.get_message(timeout=None)
            except REDIS_DOWN as exc:
                unless_cancelled()
                log.warning("pub/sub connection lost: %r", exc)
                await asyncio.sleep(0.2)
                continue
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._route(message["channel"], message["data"])
            elif kind == "subscribe":
                waiter = self._subscribing.pop(message["channel"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def _route(self, channel: bytes, data: bytes) -> None:
        if channel == self._fanout_channel:
            self._route_batch(data)
            return
        if channel == self._admin_channel:
            text = data.split(b"\n", 2)[2].decode()
            for conn in list(self.admins):
                conn.push(text)
            return
        socket_id, op, frame = data.split(b"\n", 2)
        self._deliver(channel[len(self._events_prefix) :], socket_id, op, frame)

    def _route_batch(self, data: bytes) -> None:
        """A fan-out batch (matcher/journal.py): every account's frames, only those held
        here, each socket's in order and in one write."""
        batches: dict[Connection, list[str]] = {}
        recipients = self._recipients
        for line in data.split(b"\n"):
            account_id, socket_id, op, frame = line.split(b" ", 3)
            conns = recipients(account_id, socket_id, op)
            if conns:
                text = frame.decode()
                for conn in conns:
                    batches.setdefault(conn, []).append(text)
        for conn, texts in batches.items():
            conn.push_many(texts)

    def _deliver(self, account_id: bytes, socket_id: bytes, op: bytes, frame: bytes) -> None:
        """A frame to the account's sockets held here (one when socket_id names it)."""
        conns = self._recipients(account_id, socket_id, op)
        if conns:
            text = frame.decode()
            for conn in conns:
                conn.push(text)

    def _recipients(self, account_id: bytes, socket_id: bytes, op: bytes) -> list[Connection]:
        """The sockets held here that a frame goes to; an op it answers is acked."""
        if op:
            pending = self.pending_acks.pop(op.decode(), None)
            if pending is not None and not pending[1].done():
                pending[1].set_result(None)
        conns = self.accounts.get(account_id.decode())
        if not conns:
            return []
        if not socket_id:
            return list(conns)
        target = socket_id.decode()
        return [conn for conn in conns if conn.id == target]

    async def _subscribe(self, account_id: str) -> None:
        channel = self.keys.events(account_id)
        async with self._subscription_lock:
            # Wait for Redis to confirm: a frame published before that would be lost.
            waiter = asyncio.get_running_loop().create_future()
            self._subscribing[channel.encode()] = waiter
            await self._pubsub.subscribe(channel)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(5.0):
            await waiter

    async def _unsubscribe(self, account_id: str) -> None:
        async with self._subscription_lock:
            await self._pubsub.unsubscribe(self.keys.events(account_id))

    async def _heartbeat(self) -> None:
        while True:
            try:
                alive, known = await self.store.heartbeat(self.id, HEARTBEAT_TTL_MS)
                if alive and known == 0 and self.accounts:
                    # Redis lost its data and was rebuilt: say again who is here.
                    for conn in [c for group in self.accounts.values() for c in group]:
                        await self.store.connect(conn.account_id, conn.role.value, conn.id, self.id)
            except (*REDIS_DOWN, AstroqError) as exc:
                unless_cancelled()
                log.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(HEARTBEAT_S)

    # ---- one socket ---------------------------------------------------------------
    def _origin_allowed(self, ws: WebSocket) -> bool:
        origin = ws.headers.get("origin")
        if origin is None:
            return True  # not a browser
        origin = origin.rstrip("/")
        if origin in self.settings.allowed_origins:
            return True
        if self.settings.allowed_origins:
            return False
        return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()

    async def _authenticate(self, ws: WebSocket) -> Claims | None:
        header = ws.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            await ws.accept()
            try:
                return self.tokens.decode(header[7:].strip(), TokenType.ACCESS)
            except InvalidToken:
                await ws.close(CloseCode.BAD_TOKEN)
                return None
        await ws.accept()
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                text = await _receive_text(ws)
        except asyncio.TimeoutError:
            await ws.close(CloseCode.AUTH_TIMEOUT)
            return None
        if text is None:
            return None
        metrics.FRAMES.labels("auth").inc()
        try:
            frame = protocol.parse(text, None)
            if not isinstance(frame, protocol.Auth):
                raise InvalidToken("authenticate first")
            return self.tokens.decode(frame.token, TokenType.ACCESS)
        except (protocol.FrameError, InvalidToken):
            await ws.close(CloseCode.BAD_TOKEN)
            return None

    async def serve(self, ws: WebSocket) -> None:
        if not self._origin_allowed(ws):
            await ws.close(CloseCode.POLICY_VIOLATION)  # before accept: HTTP 403
            return
        claims = await self._authenticate(ws)
        if claims is None:
            return
        try:
            async with self.pool.acquire() as pg:
                user = await db.user_by_id(pg, claims.user_id)
        except (*STORES_DOWN, asyncpg.PostgresError):
            await ws.close(CloseCode.TRY_AGAIN_LATER)  # the record is away; come back soon
            return
        if user is None or user["role"] != claims.role:
            await ws.close(CloseCode.ACCOUNT_GONE)
            return
        conn = Connection(ws, claims.user_id, claims.role, user["name"])
        try:
            await self._register(conn)
        except (*STORES_DOWN, AstroqError, asyncio.TimeoutError):
            await self._unregister(conn, connected=False)
            await ws.close(CloseCode.TRY_AGAIN_LATER)
            return
        metrics.SOCKETS.labels(conn.role.value).inc()
        receiver = asyncio.create_task(self._receive(conn))
        sender = asyncio.create_task(self._send(conn))
        overflow = asyncio.create_task(conn.overflowed.wait())
        try:
            await asyncio.wait({receiver, sender, overflow}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([receiver, sender, overflow])
            if conn.overflowed.is_set():
                try:
                    # A client that does not read may not take the close frame either.
                    async with asyncio.timeout(1.0):
                        await ws.close(CloseCode.TRY_AGAIN_LATER)
                except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
                    pass
            metrics.SOCKETS.labels(conn.role.value).dec()
            await self._unregister(conn, connected=True)
            if ws.application_state != WebSocketState.DISCONNECTED and not conn.overflowed.is_set():
                try:
                    async with asyncio.timeout(1.0):
                        await ws.close()
                except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
                    pass  # the client is already gone, or not reading

    async def _register(self, conn: Connection) -> None:
        group = self.accounts.setdefault(conn.account_id, set())
        first = not group
        group.add(conn)
        if conn.role is Role.ADMIN:
            self.admins.add(conn)
        if first:
            await self._subscribe(conn.account_id)
        state, resumed = await self._connect_when_live(conn)
        if conn.role is Role.ASTROLOGER:
            for key in ("offers", "sessions"):
                if not isinstance(state.get(key), list):
                    state[key] = []
        if resumed and (state.get("request") or state.get("session") or state.get("offers")):
            metrics.RECONNECTS.inc()
        conn.open_with(
            {"type": "ready", "role": conn.role.value, "user_id": conn.account_id, "state": state}
        )
        if conn.role is Role.ADMIN:
            conn.push_frame({"type": "stats", **await admin_stats(self.store, self.pool)})

    async def _connect_when_live(self, conn: Connection) -> tuple[dict[str, Any], bool]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIVE_STATE_WAIT_S
        while True:
            try:
                return await self.store.connect(conn.account_id, conn.role.value, conn.id, self.id)
            except Unavailable:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _unregister(self, conn: Connection, connected: bool) -> None:
        group = self.accounts.get(conn.account_id)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.accounts[conn.account_id]
                for account_id, waiter in list(self.pending_acks.values()):
                    if account_id == conn.account_id and not waiter.done():
                        waiter.set_result(None)  # its ack can no longer be seen here
                try:
                    await self._unsubscribe(conn.account_id)
                except REDIS_DOWN:
                    pass
        self.admins.discard(conn)
        if connected:
            try:
                await self.store.disconnect(
                    conn.account_id,
                    conn.id,
                    self.id,
                    int(self.settings.reconnect_grace_s * 1000),
                )
            except REDIS_DOWN as exc:
                # The heartbeat stops covering this socket; the matcher's reaper
                # cannot see it either, so the grace starts from the rebuild.
                log.warning("could not record a disconnect: %r", exc)

    async def _send(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        outbox, send_text = conn.outbox, conn.ws.send_text
        while True:
            await conn.wakeup.wait()
            conn.wakeup.clear()
            while outbox:
                conn.sending_since = loop.time()
                await send_text(outbox.popleft())
            conn.sending_since = 0.0
            conn.drained.set()

    async def _watch_stalled_sends(self) -> None:
        """Closes sockets whose current write has not finished in SEND_STALL_S: the
        client stopped reading. One sweep a second costs less than a timer per frame
        (a pass of the fan-out writes 10,000 frames)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(STALL_SWEEP_S)
            stalled_before = loop.time() - SEND_STALL_S
            for group in self.accounts.values():
                for conn in group:
                    if 0.0 < conn.sending_since < stalled_before:
                        conn.overflowed.set()  # closing it frees its place

    async def _receive(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.settings.ws_rate, self.settings.ws_burst)
        # A stretch of rate_limited errors: it ends only after a second without one
        # (a token now and then must not reset it, SPEC §4: 1008 after 5 s of errors).
        limited_since: float | None = None
        last_limited = 0.0
        while True:
            await conn.room_to_answer()
            text = await _receive_text(conn.ws)
            if text is None:
                return
            received = time.perf_counter()
            if not bucket.take():
                now = time.monotonic()
                if limited_since is None or now - last_limited > 1.0:
                    limited_since = now
                last_limited = now
                if now - limited_since >= RATE_LIMIT_CLOSE_S:
                    await conn.ws.close(CloseCode.POLICY_VIOLATION)
                    return
                conn.push_frame(error_frame(RateLimited(), _ref_of(text)))
                continue
            try:
                frame = protocol.parse(text, conn.role)
            except protocol.FrameError as exc:
                metrics.frames_of(metrics.frame_label(exc.frame_type)).inc()
                conn.push_frame(error_frame(exc.error, exc.ref))
                continue
            frame_type = protocol.frame_type(frame)
            metrics.frames_of(frame_type).inc()
            if isinstance(frame, protocol.Ping):
                conn.push_frame({"type": "pong", "ref": frame.ref} if frame.ref else {"type": "pong"})
                continue
            if isinstance(frame, protocol.Auth):
                conn.push_frame(error_frame(InvalidInput("already authenticated"), frame.ref))
                continue
            # The frame's own task enqueues it and drains the client's queue when it
            # takes the free lock; the receiver waits for the enqueue only, so this
            # socket's frames reach the queue in order. Should the socket close
            # meanwhile, the task goes on: enqueue.lua may have taken the lock.
            enqueued = loop.create_future()
            task = asyncio.create_task(self._submit(conn, frame, received, enqueued))
            self._submitting.add(task)
            task.add_done_callback(self._submitting.discard)
            task.add_done_callback(log_failure)
            await enqueued

    # ---- per-client queues ---------------------------------------------------------
    async def _submit(
        self, conn: Connection, frame: protocol.ClientFrame, received: float, enqueued: asyncio.Future[None]
    ) -> None:
        try:
            item = orjson.dumps(
                {
                    "op": f"{self.id}.{next(self._ops):x}",  # unique among gateways
                    "sock": conn.id,
                    "uid": conn.account_id,
                    "role": conn.role.value,
                    "name": conn.name,
                    "t": received,
                    "f": protocol.frame_fields(frame),
                }
            )
            first = await self.store.enqueue(conn.account_id, item, self.id, QUEUE_LOCK_MS)
        except REDIS_DOWN:
            conn.push_frame(error_frame(Unavailable(), getattr(frame, "ref", None)))
            return
        finally:
            if not enqueued.done():  # done: the receiver was cancelled, and no longer waits
                enqueued.set_result(None)
        if first is not None:
            self.drainers[conn.account_id] = asyncio.current_task()  # type: ignore[assignment]
            await self._drain(conn.account_id, first)
        elif conn.account_id not in self.drainers:
            # Another gateway holds this client's queue and drains it; should it
            # have died holding the lock, pick the queue up once the lock lapses.
            asyncio.get_running_loop().call_later(
                QUEUE_LOCK_MS / 1000 + 0.1, self._adopt_queue, conn.account_id
            )

    def _adopt_queue(self, account_id: str) -> None:
        if account_id not in self.drainers and account_id in self.accounts:
            self.drainers[account_id] = asyncio.create_task(self._drain(account_id, None))

    async def _drain(self, account_id: str, item: bytes | None) -> None:
        try:
            if item is None:
                item = await self.store.next_frame(account_id, self.id, QUEUE_LOCK_MS)
            while item is not None:
                try:
                    await self._apply(item)
                except Exception:  # one bad frame must not strand the client's queue
                    log.exception("applying a frame of %s failed", account_id)
                item = await self.store.next_frame(account_id, self.id, QUEUE_LOCK_MS)
        except REDIS_DOWN as exc:
            log.warning("client queue of %s stalled: %r", account_id, exc)
        finally:
            # Once next.lua has freed the queue, another of this client's frames may
            # take it and register its own drainer before this one gets here: that
            # one stays registered, or a frame behind it would adopt the queue too.
            if self.drainers.get(account_id) is asyncio.current_task():
                del self.drainers[account_id]

    async def _apply(self, item: bytes) -> None:
        """Applies one frame. The queue's next frame follows as soon as this one is
        applied in Redis, not once its ack is out: the ack waits for PostgreSQL,
        and a client with several frames in flight (an astrologer accepting a
        burst of offers) would otherwise have one applied per journal commit.
        Answers still reach the client in its frames' order: acks go out in
        outbox order, and an error waits for the acks of the frames before it."""
        data = orjson.loads(item)
        op, socket_id, uid, role = data["op"], data["sock"], data["uid"], data["role"]
        frame = protocol.frame_from_fields(data["f"])
        ref = getattr(frame, "ref", None)
        frame_type = protocol.frame_type(frame)
        # Registered before the call: the ack may be published before its reply is read.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending_acks[op] = (uid, waiter)
        try:
            await self._call(frame, uid, role, data["name"], socket_id, op)
        except (AstroqError, *REDIS_DOWN) as exc:
            self.pending_acks.pop(op, None)
            error = exc if isinstance(exc, AstroqError) else Unavailable()
            await self._after_earlier_acks(uid)
            await self._answer_error(uid, socket_id, error_frame(error, ref))
            metrics.frame_time_of(frame_type).observe(time.perf_counter() - data["t"])
        else:
            self._expect_ack(uid, op, waiter, frame_type, data["t"])

    def _expect_ack(
        self, uid: str, op: str, waiter: asyncio.Future[None], frame_type: str, received: float
    ) -> None:
        """Marks the account's latest frame awaiting its ack, which _deliver sees pass.
        An ack that cannot be seen here is not waited for: once the account's last
        socket on this gateway is gone, so is its subscription (_unregister then
        ends the wait), and one that never comes is given up after ACK_WAIT_S."""
        if uid not in self.accounts:
            self.pending_acks.pop(op, None)
            return
        self.last_unacked[uid] = waiter
        give_up = asyncio.get_running_loop().call_later(ACK_WAIT_S, self._give_up_ack, op)

        def acked(_: asyncio.Future[None]) -> None:
            give_up.cancel()
            if self.last_unacked.get(uid) is waiter:
                del self.last_unacked[uid]
            metrics.frame_time_of(frame_type).observe(time.perf_counter() - received)

        waiter.add_done_callback(acked)

    def _give_up_ack(self, op: str) -> None:
        pending = self.pending_acks.pop(op, None)
        if pending is not None and not pending[1].done():
            pending[1].set_result(None)

    async def _after_earlier_acks(self, uid: str) -> None:
        """Waits until the acks of the account's frames applied before this one are
        out (they go in order, so the latest one's suffices), or ACK_WAIT_S."""
        earlier = self.last_unacked.get(uid)
        if earlier is not None and not earlier.done():
            await asyncio.wait([earlier], timeout=ACK_WAIT_S)

    async def _call(
        self, frame: protocol.ClientFrame, uid: str, role: str, name: str, socket_id: str, op: str
    ) -> None:
        match frame:
            case protocol.Request(kind, astrologer_id, ref):
                await self.store.request(
                    uid,
                    name,
                    str(uuid.uuid4()),
                    kind,
                    astrologer_id,
                    socket_id,
                    op,
                    ref,
                    int(self.settings.max_wait_s * 1000),
                )
            case protocol.Cancel(request_id, ref):
                await self.store.cancel(uid, request_id, socket_id, op, ref)
            case protocol.Accept(offer_id, ref):
                await self.store.answer(uid, offer_id, "accept", str(uuid.uuid4()), socket_id, op, ref)
            case protocol.Decline(offer_id, ref):
                await self.store.answer(uid, offer_id, "decline", "", socket_id, op, ref)
            case protocol.End(session_id, ref):
                await self.store.end(uid, role, session_id, socket_id, op, ref)
            case protocol.SetStatus(status, ref):
                await self.store.set_status(uid, status, socket_id, op, ref)

    async def _answer_error(self, uid: str, socket_id: str, frame: dict[str, Any]) -> None:
        for conn in self.accounts.get(uid, ()):
            if conn.id == socket_id:
                conn.push_frame(frame)
                return
        # The socket lives on another gateway (this one drains the shared queue).
        await self.redis.publish(self.keys.events(uid), frame_message(socket_id, "", frame))


def _ref_of(text: str) -> str | None:
    try:
        ref = orjson.loads(text).get("ref")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ref if isinstance(ref, str) and len(ref) <= protocol.MAX_REF_CHARS else None


async def _receive_text(ws: WebSocket) -> str | None:
    """The next text (or UTF-8 binary) frame, or None once the client has gone."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is not None:
            return str(message["text"])
        if message.get("bytes") is not None:
            try:
                return bytes(message["bytes"]).decode()
            except UnicodeDecodeError:
                return "\x00"  # answered as bad_json


__all__ = ["Gateway", "WebSocketDisconnect"]
