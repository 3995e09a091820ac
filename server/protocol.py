"""Client frames (SPEC §4) as types, and the one parser where they arrive.

The parser is pure: text in, a typed frame (or a typed error) out. It checks
shape only; whether an id belongs to the sender is decided atomically in Redis.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from server.auth import Role
from server.errors import AstroqError, BadJson, Forbidden, InvalidInput, UnknownType

MAX_REF_CHARS = 64


@dataclass(frozen=True)
class Auth:
    token: str
    ref: str | None = None


@dataclass(frozen=True)
class Ping:
    ref: str | None = None


@dataclass(frozen=True)
class Request:
    kind: str
    astrologer_id: str | None
    ref: str | None = None


@dataclass(frozen=True)
class Cancel:
    request_id: str
    ref: str | None = None


@dataclass(frozen=True)
class End:
    session_id: str
    ref: str | None = None


@dataclass(frozen=True)
class SetStatus:
    status: str
    ref: str | None = None


@dataclass(frozen=True)
class Accept:
    offer_id: str
    ref: str | None = None


@dataclass(frozen=True)
class Decline:
    offer_id: str
    ref: str | None = None


ClientFrame = Auth | Ping | Request | Cancel | End | SetStatus | Accept | Decline

# Frames that change state go through the sender's queue and get an ack.
STATEFUL = (Request, Cancel, End, SetStatus, Accept, Decline)

ROLES: dict[type, frozenset[Role]] = {
    Request: frozenset({Role.USER}),
    Cancel: frozenset({Role.USER}),
    End: frozenset({Role.USER, Role.ASTROLOGER}),
    SetStatus: frozenset({Role.ASTROLOGER}),
    Accept: frozenset({Role.ASTROLOGER}),
    Decline: frozenset({Role.ASTROLOGER}),
}


class FrameError(Exception):
    """A frame that cannot be applied; carries its ref so the error can answer it."""

    def __init__(self, error: AstroqError, ref: str | None, frame_type: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.ref = ref
        self.frame_type = frame_type


def _uuid(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be an id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"{name} must be an id") from None


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}")
    return value


def _build(frame_type: str, body: dict[str, Any], ref: str | None) -> ClientFrame:
    if frame_type == "auth":
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise InvalidInput("token must be a string")
        return Auth(token, ref)
    if frame_type == "ping":
        return Ping(ref)
    if frame_type == "request":
        kind = _choice(body, "kind", ("chat", "call"))
        astrologer_id = None
        if body.get("astrologer_id") is not None:
            astrologer_id = _uuid(body, "astrologer_id")
        return Request(kind, astrologer_id, ref)
    if frame_type == "cancel":
        return Cancel(_uuid(body, "request_id"), ref)
    if frame_type == "end":
        return End(_uuid(body, "session_id"), ref)
    if frame_type == "status":
        return SetStatus(_choice(body, "status", ("online", "break", "offline")), ref)
    if frame_type == "accept":
        return Accept(_uuid(body, "offer_id"), ref)
    if frame_type == "decline":
        return Decline(_uuid(body, "offer_id"), ref)
    raise UnknownType(f"unknown frame type {frame_type[:32]!r}")


def parse(text: str | bytes, role: Role | None) -> ClientFrame:
    """Parses one client frame; `role` None means the socket is not yet authenticated.

    Raises FrameError carrying bad_json, unknown_type, invalid_input or forbidden.
    """
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(BadJson("the frame is not valid JSON"), None, None) from None
    if not isinstance(body, dict):
        raise FrameError(InvalidInput("a frame is a JSON object"), None, None)
    ref = body.get("ref")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF_CHARS):
        raise FrameError(InvalidInput("ref must be a string of up to 64 characters"), None, None)
    frame_type = body.get("type")
    if not isinstance(frame_type, str):
        raise FrameError(InvalidInput("type must be a string"), ref, None)
    try:
        frame = _build(frame_type, body, ref)
    except AstroqError as error:
        raise FrameError(error, ref, frame_type) from None
    allowed = ROLES.get(type(frame))
    if role is not None and allowed is not None and role not in allowed:
        raise FrameError(Forbidden(f"{frame_type} is not for the {role} role"), ref, frame_type)
    if role is not None and isinstance(frame, Auth):
        raise FrameError(InvalidInput("already authenticated"), ref, frame_type)
    return frame


def frame_type(frame: ClientFrame) -> str:
    return _TYPE_NAMES[type(frame)]


def frame_fields(frame: ClientFrame) -> dict[str, Any]:
    """The frame as a plain dict (for the sender's Redis queue)."""
    fields = {"type": frame_type(frame)}
    fields.update({k: v for k, v in frame.__dict__.items()})
    return fields


def frame_from_fields(fields: dict[str, Any]) -> ClientFrame:
    cls = _TYPES[fields.pop("type")]
    frame: ClientFrame = cls(**fields)
    return frame


_TYPE_NAMES: dict[type, str] = {
    Auth: "auth",
    Ping: "ping",
    Request: "request",
    Cancel: "cancel",
    End: "end",
    SetStatus: "status",
    Accept: "accept",
    Decline: "decline",
}
_TYPES = {name: cls for cls, name in _TYPE_NAMES.items()}
