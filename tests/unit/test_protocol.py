"""The frame parser: text in, a typed frame or a typed error out (no I/O)."""

from __future__ import annotations

import uuid

import pytest

from server import protocol
from server.auth import Role

ID = str(uuid.uuid4())


@pytest.mark.parametrize(
    "text, role, expected",
    [
        ('{"type":"auth","token":"t"}', None, protocol.Auth("t")),
        ('{"type":"ping","ref":"p"}', Role.USER, protocol.Ping("p")),
        ('{"type":"request","kind":"chat","astrologer_id":null}', Role.USER, protocol.Request("chat", None)),
        (f'{{"type":"request","kind":"call","astrologer_id":"{ID}","ref":"r"}}', Role.USER,
         protocol.Request("call", ID, "r")),
        (f'{{"type":"cancel","request_id":"{ID}"}}', Role.USER, protocol.Cancel(ID)),
        (f'{{"type":"end","session_id":"{ID}"}}', Role.ASTROLOGER, protocol.End(ID)),
        ('{"type":"status","status":"break"}', Role.ASTROLOGER, protocol.SetStatus("break")),
        (f'{{"type":"accept","offer_id":"{ID}"}}', Role.ASTROLOGER, protocol.Accept(ID)),
        (f'{{"type":"decline","offer_id":"{ID}"}}', Role.ASTROLOGER, protocol.Decline(ID)),
    ],
)
def test_good_frames(text: str, role: Role | None, expected: protocol.ClientFrame) -> None:
    assert protocol.parse(text, role) == expected


@pytest.mark.parametrize(
    "text, role, code",
    [
        ("{not json", Role.USER, "bad_json"),
        ("", Role.USER, "bad_json"),
        ("[1,2]", Role.USER, "invalid_input"),
        ('{"kind":"chat"}', Role.USER, "invalid_input"),
        ('{"type":"dance"}', Role.USER, "unknown_type"),
        ('{"type":"request","kind":"video","astrologer_id":null}', Role.USER, "invalid_input"),
        ('{"type":"request","kind":"chat","astrologer_id":"not-an-id"}', Role.USER, "invalid_input"),
        ('{"type":"request","kind":"chat","astrologer_id":7}', Role.USER, "invalid_input"),
        ('{"type":"cancel"}', Role.USER, "invalid_input"),
        ('{"type":"status","status":"asleep"}', Role.ASTROLOGER, "invalid_input"),
        ('{"type":"ping","ref":' + '"' + "x" * 65 + '"}', Role.USER, "invalid_input"),
        ('{"type":"ping","ref":5}', Role.USER, "invalid_input"),
        (f'{{"type":"accept","offer_id":"{ID}"}}', Role.USER, "forbidden"),
        ('{"type":"request","kind":"chat","astrologer_id":null}', Role.ASTROLOGER, "forbidden"),
        (f'{{"type":"end","session_id":"{ID}"}}', Role.ADMIN, "forbidden"),
        ('{"type":"auth","token":"t"}', Role.USER, "invalid_input"),
    ],
)
def test_bad_frames_get_stable_codes(text: str, role: Role, code: str) -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse(text, role)
    assert caught.value.error.code == code


def test_the_ref_comes_back_with_the_error() -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse('{"type":"cancel","ref":"abc"}', Role.USER)
    assert caught.value.ref == "abc"


def test_frames_survive_the_queue_round_trip() -> None:
    frame = protocol.Request("chat", ID, "r1")
    assert protocol.frame_from_fields(protocol.frame_fields(frame)) == frame
