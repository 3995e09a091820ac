"""uvicorn's sans-I/O WebSocket protocol with one ASGI extension: several text
frames written to the socket in one write.

A fan-out batch from the matcher holds about two frames per account in the
match path (an ack and what it caused, an offer and an assignment). Sent one
by one through ASGI, each frame costs a system call and, on loopback, the
receiver's whole TCP receive path run inside that call; here a socket's frames
of one batch cost one. The extension sits in the scope under SEND_TEXTS, so
code that runs on another server simply does not find it and sends frame by
frame.
"""

from __future__ import annotations

from typing import Any, Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

SEND_TEXTS = "astroq.send_texts"  # scope["extensions"][SEND_TEXTS]["send"](texts) -> bool


def send_texts_of(scope: Any) -> Callable[[list[str]], bool] | None:
    """The socket's batch writer, when the server offers one."""
    extension = scope.get("extensions", {}).get(SEND_TEXTS)
    return extension["send"] if extension else None


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][SEND_TEXTS] = {"send": self.send_texts}

    def send_texts(self, texts: list[str]) -> bool:
        """Writes the frames now, in order and in one write, and returns True; returns
        False, writing nothing, when the socket cannot take them at once (not yet
        accepted, closing, gone, or over its high-water mark): the caller then sends
        them through ASGI, which waits or fails as it always does."""
        if (
            not self.writable.is_set()
            or self.disconnected
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.transport.is_closing()
        ):
            return False
        try:
            for text in texts:
                self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True
