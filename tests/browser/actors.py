"""Background actors for browser tests: accounts and sockets that speak the SPEC.

The pages under test are driven through Chromium; everyone else in a scenario
(users already in line, an astrologer on break) is one of these, talking plain
HTTP (SPEC §3) and WebSocket frames (SPEC §4).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

FRAME_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    password: str
    name: str
    role: str


def unique_email(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}@example.test"


class Api:
    """HTTP calls against the live service; raises on any status it did not expect."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        token: str | None = None,
        expect: int = 200,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as client:
            response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    async def login(self, email: str, password: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST", "/api/v1/auth/login", {"email": email, "password": password}
        )
        return body

    async def register_user(self, name: str) -> Account:
        email, password = unique_email("user"), "correct horse battery"
        body = await self.call(
            "POST",
            "/api/v1/auth/register",
            {"email": email, "password": password, "name": name},
            expect=201,
        )
        return Account(body["user"]["id"], email, password, name, "user")

    async def create_astrologer(self, admin_token: str, name: str, **fields: Any) -> Account:
        email, password = unique_email("astro"), "stars align nightly"
        body = await self.call(
            "POST",
            "/api/v1/admin/astrologers",
            {"email": email, "password": password, "name": name, **fields},
            token=admin_token,
            expect=201,
        )
        return Account(body["astrologer"]["id"], email, password, name, "astrologer")

    async def stats(self, admin_token: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("GET", "/api/v1/admin/stats", token=admin_token)
        return body


class Actor:
    """One authenticated socket; frames not yet awaited wait in an inbox."""

    def __init__(self, ws: ClientConnection, ready: dict[str, Any]) -> None:
        self.ws = ws
        self.ready = ready
        self._refs = itertools.count(1)

    @classmethod
    async def connect(cls, base_url: str, token: str) -> "Actor":
        url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/ws"
        ws = await connect(url)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
        assert ready["type"] == "ready", ready
        return cls(ws, ready)

    async def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Sends a state-changing frame and returns its ack; fails on an error frame."""
        ref = f"t{next(self._refs)}"
        await self.ws.send(json.dumps({**frame, "ref": ref}))
        answer = await self.next(lambda f: f.get("ref") == ref and f["type"] in ("ack", "error"))
        assert answer["type"] == "ack", answer
        return answer

    async def next(self, match: Any, timeout_s: float = FRAME_TIMEOUT_S) -> dict[str, Any]:
        """The next frame that satisfies `match` (frames before it are dropped)."""

        async def read() -> dict[str, Any]:
            while True:
                frame: dict[str, Any] = json.loads(await self.ws.recv())
                if match(frame):
                    return frame

        return await asyncio.wait_for(read(), timeout_s)

    async def close(self) -> None:
        await self.ws.close()


async def login_actor(api: Api, account: Account) -> Actor:
    tokens = await api.login(account.email, account.password)
    return await Actor.connect(api.base_url, tokens["access_token"])
