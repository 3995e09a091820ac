"""A client that stops reading stalls nobody else and is closed (docs/protocol.md: 1013).

The server reads a client only while it has room to answer it (backpressure: a
client that does not read its answers is read no further), and closes a socket
that has taken no frame for SEND_STALL_S seconds.

The slow client is a real socket whose client stops reading: its TCP receive
buffer is pinned small, and the websockets client stops reading from TCP once one
frame waits unread (max_queue=1). It then floods the server with frames that are
each answered by an `error` frame (about 175 bytes with its 64-character ref),
in batches well under the send queue's 1,024 frames, so that what overflows is
the server's send side, not one burst: the kernel's send buffer fills first, then
the transport's, then the socket's send queue of 1,024 frames. How many frames that
takes is worked out from this machine's TCP buffer limit.

Which of the two documented endings happens is stated per test: the server closes
the socket with 1013 (and, since the client does not read, the connection is gone
from the server's side at once: its grace starts), or the connection is dropped.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.harness import Account, Client, Service

Factory = Callable[..., Awaitable[Service]]

SEND_QUEUE_FRAMES = 1024  # docs/protocol.md: the send queue a client may leave unread
SEND_STALL_S = 5.0  # docs/protocol.md: a socket that takes no frame this long is closed
REF = "r" * 64
FLOOD_FRAME = orjson.dumps({"type": "z" * 32, "ref": REF}).decode()  # answered by unknown_type
REPLY_BYTES = len(
    orjson.dumps(
        {"type": "error", "ref": REF, "code": "unknown_type", "message": f"unknown frame type '{'z' * 32}'"}
    )
)
BATCH = 200  # frames sent before yielding: far below the send queue, so no single burst fills it
ROUND_TRIPS = 15


def flood_frames() -> int:
    """Frames whose replies surely overflow every buffer between server and client."""
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        send_buffer_max = 4 * 1024 * 1024
    transport_high_water = 64 * 1024
    receive_buffer = 64 * 1024  # what the pinned SO_RCVBUF below can grow to, at most
    total = send_buffer_max + transport_high_water + receive_buffer + SEND_QUEUE_FRAMES * REPLY_BYTES
    return int(total * 1.3) // REPLY_BYTES


async def non_reading_socket(service: Service) -> ClientConnection:
    """A connection that stops taking data off TCP after one unread frame."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no receive-window autotuning
    sock.setblocking(False)
    port = int(service.base_url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await connect(service.ws_url, sock=sock, max_queue=1, ping_interval=None, max_size=None)


async def non_reading_client(service: Service, account: Account) -> tuple[ClientConnection, Client]:
    """A non-reading socket, authenticated as `account` (it read its `ready`)."""
    ws = await non_reading_socket(service)
    client = Client(ws, account)
    service.clients.append(client)
    await client.send({"type": "auth", "token": account.token})
    assert (await client.next())["type"] == "ready"
    return ws, client


async def flood(
    ws: ClientConnection, frames: int, between: Callable[[], Awaitable[None]] | None = None
) -> int:
    """Sends up to `frames`; stops early once the server stops reading (a send stalls).
    Returns how many were sent."""
    sent = 0
    try:
        while sent < frames:
            for _ in range(min(BATCH, frames - sent)):
                async with asyncio.timeout(1.0):
                    await ws.send(FLOOD_FRAME)
                sent += 1
            if between is not None and (sent // BATCH) % 25 == 0:
                await between()
            await asyncio.sleep(0.001)
    except (TimeoutError, ConnectionClosed):
        pass  # backpressure: the server no longer reads this client
    return sent


async def round_trip(page: Client) -> float:
    """request → ack → queued, then cancel → ack → cancelled; seconds taken."""
    started = time.perf_counter()
    ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    await page.wait_for("queued", request_id=ack["request_id"])
    await page.ok({"type": "cancel", "request_id": ack["request_id"]})
    await page.wait_for("cancelled", request_id=ack["request_id"])
    return time.perf_counter() - started


async def round_trips(page: Client, count: int = ROUND_TRIPS) -> list[float]:
    return [await round_trip(page) for _ in range(count)]


async def read_to_the_end(ws: ClientConnection, timeout_s: float = 10.0) -> tuple[int, int | None]:
    """Frames still delivered once the client reads again, and the close code (None: dropped)."""
    received = 0
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout_s)
            received += 1
    except ConnectionClosed as exc:
        return received, exc.rcvd.code if exc.rcvd is not None else None


async def wait_for_row(service: Service, sql: str, *args: object, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await service.fetch(sql, *args):
        assert loop.time() < deadline, f"no row for {sql} {args}"
        await asyncio.sleep(0.05)


async def test_a_client_that_stops_reading_stalls_nobody_and_gets_1013(service_factory: Factory) -> None:
    """Ending observed: the server stops reading the flooder once its answers back up,
    then closes it (1013, or the connection is dropped when even the close frame
    cannot get through) after SEND_STALL_S; its open request then ends `abandoned`.
    Meanwhile another user's request → ack → queued → cancel → ack → cancelled round
    trip takes about as long as before (median within 5x of this test's baseline).
    """
    grace_s = 0.5
    service = await service_factory(ws_rate=1e6, ws_burst=1e6, reconnect_grace_s=grace_s)
    bystander = await service.user("bystander")
    page = await service.connect(bystander)
    await round_trips(page, 3)  # warm up
    baseline = statistics.median(await round_trips(page))

    slow_account = await service.user("slow")
    slow_ws, slow = await non_reading_client(service, slow_account)
    request_id = (await slow.ok({"type": "request", "kind": "chat", "astrologer_id": None}))["request_id"]
    during: list[float] = []

    async def bystander_turn() -> None:
        during.append(await round_trip(page))

    try:
        sent = await flood(slow_ws, flood_frames(), between=bystander_turn)
        after = statistics.median(await round_trips(page))
        timings = (
            f"sent {sent} frames; median round trip before {baseline * 1000:.1f} ms, with the "
            f"stalled reader present {after * 1000:.1f} ms"
        )
        assert after <= 5 * baseline, timings
        await wait_for_row(
            service,
            "SELECT 1 FROM requests WHERE id = $1 AND state = 'cancelled' AND reason = 'abandoned'",
            request_id,
            timeout_s=SEND_STALL_S + grace_s + 5.0,
        )
        received, code = await read_to_the_end(slow_ws)
        assert received < sent, f"all {sent} answers arrived: the client was never held back"
        assert code in (1013, None), (code, received)
        assert await round_trip(page) > 0  # the bystander was never touched
    finally:
        slow_ws.transport.abort()


async def test_a_client_that_never_reads_again_is_let_go(service_factory: Factory) -> None:
    """Ending expected: the server closes (1013) or drops the connection while the
    client still does not read, so the socket is gone on the server's side: the
    client's reconnect grace runs out and its open request ends `abandoned`."""
    grace_s = 0.5
    service = await service_factory(ws_rate=1e6, ws_burst=1e6, reconnect_grace_s=grace_s)
    account = await service.user("slow")
    slow_ws, slow = await non_reading_client(service, account)
    request_id = (await slow.ok({"type": "request", "kind": "chat", "astrologer_id": None}))["request_id"]
    await slow.wait_for("queued")

    try:
        await flood(slow_ws, flood_frames())  # from here on the client reads nothing
        await wait_for_row(
            service,
            "SELECT 1 FROM requests WHERE id = $1 AND state = 'cancelled' AND reason = 'abandoned'",
            request_id,
            timeout_s=SEND_STALL_S + grace_s + 5.0,
        )
        _, code = await read_to_the_end(slow_ws)
        assert code in (1013, None), code
    finally:
        slow_ws.transport.abort()  # a closing handshake cannot get through the full buffers


# ---- a client that reads, but sends a burst --------------------------------------------------


async def burst_answers(service: Service, frames: int) -> tuple[Counter[str], Client]:
    """Sends `frames` pings at once from a client that keeps reading; what came back."""
    page = await service.connect(await service.user())
    await asyncio.gather(*(page.send({"type": "ping"}) for _ in range(frames)))
    answers: Counter[str] = Counter()
    try:
        while sum(answers.values()) < frames:
            frame = await page.next(timeout=5.0)
            answers[frame.get("code") or frame["type"]] += 1
    except ConnectionClosed as exc:
        answers[f"closed {exc.rcvd.code if exc.rcvd else None}"] += 1
    return answers, page


async def test_a_burst_over_the_rate_is_answered_frame_by_frame(service_factory: Factory) -> None:
    """SPEC §4: frames over the rate get `rate_limited`; the socket stays open (the 1008
    close needs 5 s over the rate). A burst the size of the send queue, at the default
    rate (20/s, burst 40), from a client that reads everything."""
    service = await service_factory(ws_rate=20.0, ws_burst=40.0)
    frames = SEND_QUEUE_FRAMES // 2
    answers, page = await burst_answers(service, frames)
    assert set(answers) == {"pong", "rate_limited"}, answers
    assert sum(answers.values()) == frames and answers["pong"] <= 45, answers
    await asyncio.sleep(0.2)  # a few tokens come back
    await page.send({"type": "ping"})
    assert (await page.wait_for("pong"))["type"] == "pong"


async def test_a_burst_larger_than_the_send_queue_is_answered_too(service_factory: Factory) -> None:
    """As above with twice the send queue's size in one burst: still one answer per frame."""
    service = await service_factory(ws_rate=20.0, ws_burst=40.0)
    frames = SEND_QUEUE_FRAMES * 2
    answers, page = await burst_answers(service, frames)
    assert set(answers) == {"pong", "rate_limited"}, answers
    assert sum(answers.values()) == frames, answers
    await asyncio.sleep(0.2)
    await page.send({"type": "ping"})
    assert (await page.wait_for("pong"))["type"] == "pong"


async def test_a_client_that_pauses_reading_gets_every_answer_once_in_order(
    service_factory: Factory,
) -> None:
    """Frames are written in place while the socket takes them and queued once it
    does not (server/ws.py: Connection.push). A client that stops reading long enough
    for every buffer to fill, then reads again, gets each answer once and in order."""
    service = await service_factory(ws_rate=1e6, ws_burst=1e6)
    account = await service.user("pausing")
    paused_ws, _ = await non_reading_client(service, account)

    pong_bytes = len(orjson.dumps({"type": "pong", "ref": "0" * 64}))
    frames = flood_frames() * REPLY_BYTES // pong_bytes  # more than every buffer holds
    refs = [f"{n:064d}" for n in range(frames)]

    async def send_all() -> None:
        for start in range(0, frames, BATCH):
            for ref in refs[start : start + BATCH]:
                await paused_ws.send(orjson.dumps({"type": "ping", "ref": ref}).decode())
            await asyncio.sleep(0)

    sender = asyncio.create_task(send_all())
    try:
        # Meanwhile the answers outgrow the kernel's buffers and the transport's,
        # so the server queues them, then stops reading this client.
        await asyncio.sleep(1.0)
        received = [orjson.loads(await asyncio.wait_for(paused_ws.recv(), 10.0))["ref"] for _ in refs]
        await sender
        assert received == refs
    finally:
        sender.cancel()
        paused_ws.transport.abort()
