"""server/wsprotocol.py on a real uvicorn server and a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from server.cli import uvicorn_config
from server.wsprotocol import send_texts_of
from tests.harness import free_port


async def _serve(handler: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(Starlette(routes=[WebSocketRoute("/ws", handler)]), "127.0.0.1", port, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"ws://127.0.0.1:{port}/ws"


async def test_frames_written_together_arrive_whole_and_in_order() -> None:
    after_close: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        await ws.accept()
        send_texts = send_texts_of(ws.scope)
        assert send_texts is not None
        assert send_texts(["one", '{"type":"two"}', "three" * 1000])
        await ws.send_text("four")
        assert await ws.receive_text() == "bye"
        await ws.receive()  # the client's close
        after_close.set_result(send_texts(["late"]))

    server, task, url = await _serve(handler)
    try:
        async with connect(url) as client:
            assert [await client.recv() for _ in range(4)] == ["one", '{"type":"two"}', "three" * 1000, "four"]
            await client.send("bye")
        # Closed: nothing is written, and the caller is told to go through ASGI.
        assert await asyncio.wait_for(after_close, 5) is False
    finally:
        server.should_exit = True
        await task


async def test_a_socket_not_yet_accepted_takes_no_batch() -> None:
    before_accept: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        send_texts = send_texts_of(ws.scope)
        assert send_texts is not None
        before_accept.set_result(send_texts(["early"]))
        await ws.accept()
        await ws.send_text("first")

    server, task, url = await _serve(handler)
    try:
        async with connect(url) as client:
            assert await client.recv() == "first"
        assert before_accept.result() is False
    finally:
        server.should_exit = True
        await task
