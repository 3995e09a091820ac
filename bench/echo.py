"""`python -m bench.echo PORT`: a bare websockets echo server, the ceiling the gateway is held against.

Same stack as the gateway's clients see (websockets on uvloop, one process,
compression off), with nothing behind it: every frame is sent straight back.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass  # the client hung up with frames in flight


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None, ping_interval=None, max_size=2**16):
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
