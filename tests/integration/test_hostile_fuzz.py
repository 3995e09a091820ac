"""Fuzzing the socket and the JSON endpoints (SPEC §3, §4, §6).

10,000 WebSocket frames from a seeded generator (a fixed seed: the same frame
shapes every run, and a failure names the frame and its category), on a user, an astrologer and an admin
socket at once: random bytes and text, malformed JSON, JSON that is not an object,
oversize frames, wrong and missing types and fields, frames of the wrong role,
random and foreign ids (other clients' live requests, offers and sessions), and
refs of random lengths and types. Every frame must get exactly one answer with a
documented meaning (`pong`, or an `error` whose code is the one that frame calls
for, carrying the frame's ref) or, for an oversize frame, the documented close
1009. None may change anything: the fuzzing user still has no request, the
astrologer is still online with no offer, and PostgreSQL is unchanged, while a
bystander keeps making requests and the live session and offer of others stay
as they were.

The JSON endpoints get the same treatment over HTTP: no 5xx, every error in the
SPEC's body with a code that fits the endpoint, and no row written.

Frames are sent in windows of WINDOW per socket, far below the send queue's 1,024
(see test_hostile_slow.py for what a larger burst does), with the rate limit raised
so that `rate_limited` does not stand in for the answer under test.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from websockets.exceptions import ConnectionClosed

from tests.harness import Account, Client, Service

Factory = Callable[..., Awaitable[Service]]

SEED = 0xA57
FRAMES = 10_000
OVERSIZE_FRAMES = 24  # of FRAMES; each closes its socket (1009), so each gets a fresh one
WINDOW = 100
MAX_FRAME_BYTES = 16 * 1024
MAX_REF_CHARS = 64
KNOWN_TYPES = ("auth", "ping", "request", "cancel", "end", "status", "accept", "decline")

HTTP_CASES = 900
HTTP_STATUS = {
    "bad_json": 400,
    "invalid_input": 422,
    "payload_too_large": 413,
    "invalid_credentials": 401,
    "invalid_token": 401,
    "unauthorized": 401,
    "not_found": 404,
    "email_taken": 409,
    "too_many_attempts": 429,
}

# Every table of the record, in an order that makes two snapshots comparable.
RECORD = {
    "users": "SELECT * FROM users ORDER BY id",
    "astrologers": "SELECT * FROM astrologers ORDER BY id",
    "requests": "SELECT * FROM requests WHERE user_id <> $1 ORDER BY id",
    "offers": "SELECT o.* FROM offers o JOIN requests r ON r.id = o.request_id"
    " WHERE r.user_id <> $1 ORDER BY o.id",
    "sessions": "SELECT * FROM sessions WHERE user_id <> $1 ORDER BY id",
    "status_changes": "SELECT * FROM status_changes ORDER BY id",
    "flow_settings": "SELECT * FROM flow_settings",
    "admin_changes": "SELECT * FROM admin_changes ORDER BY id",
    "refresh_tokens": "SELECT * FROM refresh_tokens ORDER BY jti",
}


async def record(service: Service, bystander: Account) -> dict[str, list[tuple[Any, ...]]]:
    """The record, leaving out the rows the bystander makes on purpose."""
    snapshot = {}
    for name, sql in RECORD.items():
        args = (uuid.UUID(bystander.id),) if "$1" in sql else ()
        snapshot[name] = [tuple(r.items()) for r in await service.fetch(sql, *args)]
    return snapshot


# ---- the WebSocket fuzzer ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One frame and what may answer it."""

    payload: str | bytes
    answers: frozenset[str]  # "pong", or error codes
    ref: str | None  # the unique ref its answer carries; None: answered in order, ref-less
    what: str  # its category, for failure messages
    empty_ref: bool = False  # sent with ref "": its error carries "", its pong no ref

    def describe(self) -> str:
        text = self.payload if isinstance(self.payload, str) else repr(self.payload)
        return f"{self.what}: {text[:160]!r}{'...' if len(text) > 160 else ''}"


@dataclass
class Ids:
    """Ids a hostile frame may aim at."""

    foreign: list[str]  # other clients' live request, offer and session ids, and accounts
    not_astrologers: list[str]  # ids a direct request may name that are no online astrologer
    offline_astrologer: str
    tokens: list[str]  # valid tokens of other accounts, for a second `auth`


class Fuzzer:
    def __init__(self, rng: random.Random, role: str, ids: Ids) -> None:
        self.rng = rng
        self.role = role
        self.ids = ids
        self.serial = 0

    # -- building blocks --
    def unique_ref(self) -> str:
        """A ref no other frame carries, of a random length up to 64 characters."""
        self.serial += 1
        prefix = f"{self.role[0]}{self.serial:x}."
        length = self.rng.randint(len(prefix), MAX_REF_CHARS)
        alphabet = string.ascii_letters + string.digits + " -_/\\\"'{}:,é中🙂\t"
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(length - len(prefix)))

    def some_id(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.choice(self.ids.foreign)
        if r < 0.55:
            return self.new_id()
        value = uuid.UUID(int=self.rng.getrandbits(128))
        spellings = [str(value).upper(), value.hex, f"{{{value}}}", value.urn, str(uuid.UUID(int=0))]
        return self.rng.choice(spellings)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def not_an_id(self) -> Any:
        fresh = self.new_id()
        return self.rng.choice(
            [
                None, 0, 12.5, True, [], {}, [fresh], "", " ", "not-an-id", fresh[:-1], fresh + "0",
                fresh + " OR 1=1", "' OR '1'='1", "*", "../" * 4, "\u0000", "x" * 300,
                fresh.replace("-", "g", 1),
            ]
        )

    def junk_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for _ in range(self.rng.randint(0, 3)):
            key = self.rng.choice(["user_id", "uid", "role", "admin", "sock", "op", "__proto__", "f"])
            fields[key] = self.rng.choice([True, "admin", self.rng.choice(self.ids.foreign), None])
        return fields

    def encode(self, body: Any) -> str:
        return orjson.dumps(body).decode()

    # -- categories: each returns a Case or None (try another) --
    def random_bytes(self) -> Case | None:
        size = self.rng.choice([0, 1, 2, 8, 64, 512, 4096, MAX_FRAME_BYTES])
        data = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, size)))
        return self._raw(data, "random bytes (binary frame)")

    def random_text(self) -> Case | None:
        size = self.rng.choice([0, 1, 3, 20, 200, 2000])
        pool = string.printable + "{}[]\":,\\é中🙂\u2028\u0000\ufeff"
        text = "".join(self.rng.choice(pool) for _ in range(self.rng.randint(0, size)))
        return self._raw(text, "random text")

    def malformed_json(self) -> Case | None:
        text = self.encode({"type": self.rng.choice(KNOWN_TYPES), "ref": "x", "request_id": self.new_id()})
        cut = self.rng.randint(1, len(text) - 1)
        mutations = [
            text[:cut],
            text[:cut] + text[cut + 1 :],
            text.replace('"', "'"),
            text[:-1] + ",}",
            text + "x",
            text + text,
            "\ufeff" + text,
            text.replace('"x"', "NaN"),
            text.replace('"x"', "undefined"),
            "/* c */" + text,
            text.replace(":", "=", 1),
            text.replace("{", "{{", 1),
            "[" * 5000 + "]" * 5000,
            '{"type":"ping","deep":' + "[" * 3000 + "]" * 3000 + "}",
        ]
        return self._raw(self.rng.choice(mutations), "malformed JSON")

    def not_an_object(self) -> Case:
        body = self.rng.choice(
            [[], [{"type": "ping"}], "ping", 1, -0.5, None, True, False, '{"type":"ping"}', [None] * 50]
        )
        return Case(self.encode(body), frozenset({"invalid_input"}), None, "JSON that is not an object")

    def bad_ref(self) -> Case:
        ref = self.rng.choice(
            [
                "r" * self.rng.randint(MAX_REF_CHARS + 1, 400),
                "🙂" * (MAX_REF_CHARS + 1),
                self.rng.randint(-(2**40), 2**40),
                1.5, True, False, [], ["r"], {"ref": "r"},
            ]
        )
        body = {"type": self.rng.choice(KNOWN_TYPES + ("zzz",)), "ref": ref, "request_id": self.some_id()}
        return Case(self.encode(body), frozenset({"invalid_input"}), None, "a bad ref")

    def empty_ref(self) -> Case:
        if self.rng.random() < 0.5:
            ping = self.encode({"type": "ping", "ref": ""})
            return Case(ping, frozenset({"pong"}), None, "ping, empty ref", empty_ref=True)
        body = {"type": self.rng.choice(["", "pong", "zzz"]), "ref": ""}
        return Case(self.encode(body), frozenset({"unknown_type"}), None, "unknown type, empty ref", True)

    def no_ref(self) -> Case:
        """Frames that fail to parse, without a ref: answered in order."""
        shapes: list[dict[str, Any]] = [
            {"type": 7}, {}, {"kind": "chat"}, {"type": "zzz"}, {"type": "ping"},
        ]
        body = self.rng.choice(shapes)
        answers = {"pong"} if body.get("type") == "ping" else {"invalid_input", "unknown_type"}
        if body.get("type") == "zzz":
            answers = {"unknown_type"}
        return Case(self.encode({**body, **self.junk_fields()}), frozenset(answers), None, "no ref")

    def ping(self) -> Case:
        ref = self.unique_ref()
        body: dict[str, Any] = {"type": "ping", "ref": ref, **self.junk_fields()}
        if self.rng.random() < 0.2:
            body["pad"] = "p" * self.rng.randint(1, MAX_FRAME_BYTES - 400)
        text = self.encode(body)
        if self.rng.random() < 0.1:
            text = text.replace('"ping"', '"p\\u0069ng"')  # the same string, escaped
        return Case(text, frozenset({"pong"}), ref, "ping")

    def odd_type(self) -> Case:
        ref = self.unique_ref()
        value = self.rng.choice(
            [None, 1, 0.5, True, [], ["ping"], {"type": "ping"}, "", "PING", "Ping", " ping", "ping ",
             "ping\u0000", "requests", "statuses", "pong", "ready", "ack", "error", "offer", "stats",
             "__proto__", "z" * 300]
        )
        body: dict[str, Any] = {"ref": ref, "request_id": self.some_id()}
        if self.rng.random() < 0.9:
            body["type"] = value
        if "type" in body and isinstance(value, str) and value:
            answers = {"unknown_type"}
        else:  # missing, empty or not a string: a wrong field, or an unknown type
            answers = {"invalid_input", "unknown_type"}
        return Case(self.encode(body), frozenset(answers), ref, "missing, odd or unknown type")

    def wrong_fields(self) -> Case:
        ref = self.unique_ref()
        frame_type = self.rng.choice(["request", "cancel", "end", "status", "accept", "decline", "auth"])
        body: dict[str, Any] = {"type": frame_type, "ref": ref, **self.junk_fields()}
        if frame_type == "request":
            if self.rng.random() < 0.5:
                body["kind"] = self.rng.choice(["video", "CHAT", "", None, 1, ["chat"]])
                body["astrologer_id"] = None
            else:
                body["kind"] = "chat"
                body["astrologer_id"] = self.not_an_id() or "x"
        elif frame_type == "status":
            if self.rng.random() < 0.8:
                body["status"] = self.rng.choice(["ONLINE", "busy", "", None, 1, ["online"], "on line"])
        elif frame_type == "auth":
            if self.rng.random() < 0.7:
                body["token"] = self.rng.choice([None, 1, "", ["t"], {"token": "t"}])
        else:
            name = {"cancel": "request_id", "end": "session_id"}.get(frame_type, "offer_id")
            value = self.not_an_id()
            if value is not None or self.rng.random() < 0.5:
                body[name] = value
        answers = {"invalid_input"}
        if not self._role_may_send(frame_type):
            answers.add("forbidden")  # wrong in two ways: either answer is right
        return Case(self.encode(body), frozenset(answers), ref, f"wrong fields in {frame_type}")

    def second_auth(self) -> Case:
        ref = self.unique_ref()
        body = {"type": "auth", "token": self.rng.choice(self.ids.tokens), "ref": ref}
        answers = frozenset({"invalid_input", "forbidden"})
        return Case(self.encode(body), answers, ref, "auth again, as another account")

    def wrong_role(self) -> Case | None:
        ref = self.unique_ref()
        frames: dict[str, dict[str, Any]] = {
            "request": {"type": "request", "kind": "call", "astrologer_id": None},
            "cancel": {"type": "cancel", "request_id": self.some_id()},
            "end": {"type": "end", "session_id": self.some_id()},
            "status": {"type": "status", "status": self.rng.choice(["online", "break", "offline"])},
            "accept": {"type": "accept", "offer_id": self.some_id()},
            "decline": {"type": "decline", "offer_id": self.some_id()},
        }
        choices = [t for t in frames if not self._role_may_send(t)]
        frame_type = self.rng.choice(choices)
        body = {**frames[frame_type], "ref": ref, **self.junk_fields()}
        return Case(self.encode(body), frozenset({"forbidden"}), ref, f"{frame_type} from a {self.role}")

    def random_id(self) -> Case | None:
        """A frame of the sender's own role aimed at an id that is not its own."""
        if self.role == "admin":
            return None  # no state-changing frame is an admin's
        ref = self.unique_ref()
        if self.role == "user":
            frame_type = self.rng.choice(["cancel", "end", "request"])
            if frame_type == "request":
                target = self.rng.choice([*self.ids.not_astrologers, self.ids.offline_astrologer])
                kind = self.rng.choice(["chat", "call"])
                body = {"type": "request", "kind": kind, "astrologer_id": target, "ref": ref}
                offline = target == self.ids.offline_astrologer
                answers = {"astrologer_offline"} if offline else {"not_found"}
                return Case(self.encode(body), frozenset(answers), ref, "request, foreign id")
            name = "request_id" if frame_type == "cancel" else "session_id"
        else:
            frame_type = self.rng.choice(["accept", "decline", "end"])
            name = "session_id" if frame_type == "end" else "offer_id"
        target = self.some_id()
        body = {"type": frame_type, name: target, "ref": ref, **self.junk_fields()}
        try:
            canonical = str(uuid.UUID(target))
        except ValueError:
            answers = {"invalid_input"}
        else:  # a UUID in another spelling may be read as that UUID, or refused
            answers = {"not_found"} if canonical == target else {"not_found", "invalid_input"}
        return Case(self.encode(body), frozenset(answers), ref, f"{frame_type}, foreign id")

    def _role_may_send(self, frame_type: str) -> bool:
        allowed = {
            "user": {"request", "cancel", "end", "auth", "ping"},
            "astrologer": {"status", "accept", "decline", "end", "auth", "ping"},
            "admin": {"auth", "ping"},
        }
        return frame_type in allowed[self.role]

    def _raw(self, data: str | bytes, what: str) -> Case | None:
        """Data that is no frame: bad_json, or invalid_input where it happens to be JSON."""
        size = len(data.encode() if isinstance(data, str) else data)
        if size > MAX_FRAME_BYTES:
            return None
        text: str | None
        if isinstance(data, bytes):
            try:
                text = data.decode()
            except UnicodeDecodeError:
                text = None
        else:
            text = data
        valid = []
        if text is not None:
            for loads in (orjson.loads, _strict_json):
                try:
                    valid.append(loads(text))
                except (ValueError, RecursionError):
                    pass
        if any(isinstance(v, dict) for v in valid):
            return None  # an object after all: not what this category is for
        answers = {"bad_json", "invalid_input"} if valid else {"bad_json"}
        return Case(data, frozenset(answers), None, what)

    CATEGORIES: list[tuple[str, float]] = [
        ("random_bytes", 0.08),
        ("random_text", 0.08),
        ("malformed_json", 0.10),
        ("not_an_object", 0.05),
        ("bad_ref", 0.06),
        ("empty_ref", 0.03),
        ("no_ref", 0.04),
        ("ping", 0.06),
        ("odd_type", 0.10),
        ("wrong_fields", 0.14),
        ("second_auth", 0.02),
        ("wrong_role", 0.10),
        ("random_id", 0.14),
    ]

    def case(self) -> Case:
        names = [name for name, _ in self.CATEGORIES]
        weights = [weight for _, weight in self.CATEGORIES]
        while True:
            made = getattr(self, self.rng.choices(names, weights)[0])()
            if made is not None:
                return made

    def oversize(self) -> str | bytes:
        size = self.rng.randint(MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES)
        if self.rng.random() < 0.5:
            return self.encode({"type": "ping", "pad": "x" * size})
        return bytes(self.rng.getrandbits(8) for _ in range(size))


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


# What a socket may be sent unasked while it fuzzes: nothing that tells of a change
# to its own state (queued, offer, cancelled, status ...).
PUSHES = {"user": set(), "astrologer": {"waiting"}, "admin": {"stats"}}


def answer_of(frame: dict[str, Any]) -> str | None:
    if frame.get("type") == "pong":
        return "pong"
    if frame.get("type") == "error":
        return str(frame.get("code"))
    if frame.get("type") == "ack":
        return "ack"
    return None  # a push: no answer to anything


async def run_window(client: Client, role: str, cases: list[Case], log: list[str]) -> None:
    """Sends the cases, then reads until each has its one answer; fails on any other."""
    for case in cases:
        await client.ws.send(case.payload)
    by_ref = {case.ref: case for case in cases if case.ref is not None}
    in_order = [case for case in cases if case.ref is None]
    answered = 0
    while answered < len(cases):
        try:
            raw = await asyncio.wait_for(client.ws.recv(), 10.0)
        except (asyncio.TimeoutError, ConnectionClosed) as exc:
            missing = [c.describe() for c in in_order] + [c.describe() for c in by_ref.values()]
            raise AssertionError(f"{exc!r} with {len(missing)} frames unanswered: {missing[:5]}") from None
        frame = orjson.loads(raw)
        answer = answer_of(frame)
        if answer is None:
            assert frame.get("type") in PUSHES[role], f"a {role} socket was sent {frame}"
            continue
        answered += 1
        ref = frame.get("ref")
        if isinstance(ref, str) and ref in by_ref:
            case = by_ref.pop(ref)
        else:
            assert in_order, f"an answer nothing asked for: {frame}"
            case = in_order.pop(0)
            expected_ref = "" if case.empty_ref and answer != "pong" else None
            assert ref == expected_ref, f"{case.describe()} answered with ref {ref!r}: {frame}"
        assert answer in case.answers, (
            f"{case.describe()} answered {frame}, expected one of {set(case.answers)}"
        )
        log.append(answer)


async def fuzz_socket(
    service: Service, account: Account, fuzzer: Fuzzer, frames: int, log: list[str]
) -> Client:
    client = await service.connect(account)
    sent = 0
    while sent < frames:
        window = [fuzzer.case() for _ in range(min(WINDOW, frames - sent))]
        await run_window(client, fuzzer.role, window, log)
        sent += len(window)
    return client


async def oversize(service: Service, accounts: list[Account], fuzzer: Fuzzer, frames: int) -> None:
    for i in range(frames):
        client = await service.connect(accounts[i % len(accounts)])
        await client.ws.send(fuzzer.oversize())
        try:
            while True:
                raw = await asyncio.wait_for(client.ws.recv(), 5.0)
                assert answer_of(orjson.loads(raw)) is None, raw[:200]
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1009, exc


async def journey(
    service: Service, user: Account, astrologer_id: str, rounds: int = 1_000_000,
    until: asyncio.Event | None = None,
) -> int:
    """The bystander: direct requests that wait in line, then are cancelled, over and over."""
    page = await service.connect(user)
    done = 0
    while done < rounds and not (until is not None and until.is_set()):
        ack = await page.ok({"type": "request", "kind": "chat", "astrologer_id": astrologer_id})
        await page.wait_for("queued", request_id=ack["request_id"])
        await page.ok({"type": "cancel", "request_id": ack["request_id"]})
        await page.wait_for("cancelled", request_id=ack["request_id"], reason="user")
        done += 1
        await asyncio.sleep(0.05)
    return done


async def test_ten_thousand_hostile_frames_change_nothing(service_factory: Factory) -> None:
    service = await service_factory(ws_rate=1e6, ws_burst=1e6, offer_timeout_s=300.0)
    assert service.admin is not None
    # Others' live state the fuzz aims at: a session and an open offer with `busy`,
    # who is then full (capacity 2), and an astrologer who is offline.
    busy = await service.astrologer("busy", capacity=2)
    offline = await service.astrologer("offline")
    busy_console = await service.online(busy)
    in_session, waiting = await service.user("in-session"), await service.user("waiting")
    session_page, waiting_page = await service.connect(in_session), await service.connect(waiting)
    first = await session_page.ok({"type": "request", "kind": "chat", "astrologer_id": busy.id})
    offer = await busy_console.wait_for("offer", request_id=first["request_id"])
    session_id = (await busy_console.ok({"type": "accept", "offer_id": offer["offer_id"]}))["session_id"]
    second = await waiting_page.ok({"type": "request", "kind": "call", "astrologer_id": busy.id})
    open_offer = await busy_console.wait_for("offer", request_id=second["request_id"])

    user, astrologer = await service.user("fuzz-user"), await service.astrologer("fuzz-astrologer")
    await service.online(astrologer)  # this console stays online; the fuzz uses a second socket
    bystander = await service.user("bystander")
    ids = Ids(
        foreign=[
            first["request_id"], second["request_id"], session_id, open_offer["offer_id"],
            offer["offer_id"], busy.id, in_session.id, waiting.id, user.id, astrologer.id,
            service.admin.id, bystander.id,
        ],
        not_astrologers=[
            str(uuid.uuid4()), in_session.id, user.id, service.admin.id, str(uuid.UUID(int=0)),
        ],
        offline_astrologer=offline.id,
        tokens=[in_session.token, busy.token, service.admin.token, user.token],
    )
    await asyncio.sleep(0.3)
    before = await record(service, bystander)

    rng = random.Random(SEED)
    shares = {"user": 0.4, "astrologer": 0.35, "admin": 0.25}
    stream = FRAMES - OVERSIZE_FRAMES
    counts = {role: int(stream * share) for role, share in shares.items()}
    counts["user"] += stream - sum(counts.values())
    accounts = {"user": user, "astrologer": astrologer, "admin": service.admin}
    logs: dict[str, list[str]] = {role: [] for role in accounts}
    fuzzers = {role: Fuzzer(random.Random(rng.getrandbits(64)), role, ids) for role in accounts}

    fuzz_done = asyncio.Event()
    bystander_rounds = asyncio.create_task(journey(service, bystander, busy.id, until=fuzz_done))
    try:
        clients = await asyncio.gather(
            *(fuzz_socket(service, accounts[r], fuzzers[r], counts[r], logs[r]) for r in accounts)
        )
        big = Fuzzer(random.Random(SEED + 1), "user", ids)
        await oversize(service, list(accounts.values()), big, OVERSIZE_FRAMES)
    finally:
        fuzz_done.set()
    assert await bystander_rounds >= 1, "the bystander got no request through during the fuzz"

    answered = sum(len(log) for log in logs.values()) + OVERSIZE_FRAMES
    assert answered == FRAMES
    # Every kind of answer came up on each socket: the fuzz reached every check.
    common = {"pong", "bad_json", "invalid_input", "unknown_type", "forbidden"}
    expected_kinds = {
        "user": common | {"not_found", "astrologer_offline"},
        "astrologer": common | {"not_found"},
        "admin": common,
    }
    for role, log in logs.items():
        assert set(log) == expected_kinds[role], (role, Counter(log))
    # The bystander's line kept moving all along, and still does.
    assert await journey(service, bystander, busy.id, rounds=2) == 2
    # The fuzzing sockets are still open and answering.
    for client in clients:
        await client.send({"type": "ping", "ref": "still-there"})
        assert (await client.wait_for("pong", ref="still-there"))["type"] == "pong"

    # Nothing changed: not the record, not the live state.
    await asyncio.sleep(0.3)
    assert await record(service, bystander) == before
    assert (await service.connect(user)).frames[-1]["state"] == {"request": None, "session": None}
    state = (await service.connect(astrologer)).frames[-1]["state"]
    assert (state["status"], state["offers"], state["sessions"]) == ("online", [], [])
    busy_state = (await service.connect(busy)).frames[-1]["state"]
    assert [o["offer_id"] for o in busy_state["offers"]] == [open_offer["offer_id"]]
    assert [s["session_id"] for s in busy_state["sessions"]] == [session_id]
    waiting_state = (await service.connect(waiting)).frames[-1]["state"]
    assert waiting_state["request"]["request_id"] == second["request_id"]
    session_state = (await service.connect(in_session)).frames[-1]["state"]
    assert session_state["session"]["session_id"] == session_id
    # And the others' offer and session still work.
    await busy_console.ok({"type": "accept", "offer_id": open_offer["offer_id"]})
    await session_page.ok({"type": "end", "session_id": session_id})


# ---- the HTTP fuzzer -----------------------------------------------------------------------------


class BodyFuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def random_json(self, depth: int = 0) -> Any:
        kind = self.rng.randint(0, 9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.choice([True, False])
        if kind == 2:
            return self.rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 1e308, -0.0, 0.5, 1e-300])
        if kind in (3, 4, 5, 6):
            pool = string.printable + "é中🙂\u0000\u2028"
            return "".join(self.rng.choice(pool) for _ in range(self.rng.choice([0, 1, 8, 64, 300])))
        if kind in (7, 8):
            return [self.random_json(depth + 1) for _ in range(self.rng.randint(0, 4))]
        keys = ["x", "", "__proto__", "constructor", "$where", "id", "role", "admin", "a b", "é"]
        return {self.rng.choice(keys): self.random_json(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def raw(self) -> bytes:
        choices: list[Callable[[], bytes]] = [
            lambda: bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 2000))),
            lambda: b"",
            lambda: b"{",
            lambda: b'{"email": "a@b", }',
            lambda: b"[" * 5000 + b"]" * 5000,
            lambda: b'{"password": NaN}',
            lambda: b'{"weight": Infinity}',
            lambda: b"\xef\xbb\xbf{}",
            lambda: b'{"a": "\xff\xfe"}',
            lambda: b'{"weight": 1' + b"0" * 400 + b"}",
            lambda: orjson.dumps({"name": "x" * (70 * 1024)}),
            lambda: orjson.dumps(self.random_json()),
        ]
        return self.rng.choice(choices)()

    def mutated(self, valid: dict[str, Any], bad: dict[str, list[Any]], extra_ok: bool) -> dict[str, Any]:
        """`valid` with at least one field made certainly invalid (dropped, or a bad value)."""
        body = dict(valid)
        for _ in range(self.rng.randint(1, len(bad))):
            name = self.rng.choice(list(bad))
            options = bad[name]
            if options and (self.rng.random() < 0.85 or name not in body):
                body[name] = self.rng.choice(options)
            else:
                body.pop(name, None)
        if not extra_ok or self.rng.random() < 0.2:
            body[self.rng.choice(["role", "id", "is_admin", "password_hash", "status"])] = "admin"
        return body


WRONG_TYPES: list[Any] = [None, 0, 1.5, True, [], {}, ["x"], {"$ne": None}]
BAD_EMAILS: list[Any] = [
    "", "no-at-sign", "a@@b", "@b", "a@", "a b@c", "a@b c", "a\n@b", "x" * 260 + "@b.c", *WRONG_TYPES,
]
BAD_PASSWORDS: list[Any] = ["", "short", "1234567", "x" * 1025, *WRONG_TYPES]
BAD_NAMES: list[Any] = ["", "   ", "x" * 101, *WRONG_TYPES]


async def fuzz_http(
    service: Service, fuzzer: BodyFuzzer, method: str, path: str, headers: dict[str, Any],
    body: Any, allowed: set[str],
) -> tuple[int, str]:
    if method != "GET":
        content_type = fuzzer.rng.choice(
            ["application/json", "application/json; charset=latin-1", "text/plain",
             "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
        )
        if content_type is not None:
            headers = {**headers, "content-type": content_type}
    if isinstance(body, bytes):
        if fuzzer.rng.random() < 0.1:
            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(body), 4096):
                    yield body[i : i + 4096]

            reply = await service.http.request(method, path, content=chunks(), headers=headers)
        else:
            reply = await service.http.request(method, path, content=body, headers=headers)
    else:
        # The standard library writes what orjson will not: integers past 64 bits, and
        # Infinity for a float that overflowed (not JSON: answered bad_json).
        content = json.dumps(body, ensure_ascii=False).encode()
        reply = await service.http.request(method, path, content=content, headers=headers)
    where = f"{method} {path} {str(body)[:200]!r}"
    assert reply.status_code < 500, f"{where} → {reply.status_code} {reply.text[:300]}"
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(
            f"{where} → {reply.status_code} without the error body: {reply.text[:300]}"
        ) from None
    assert isinstance(error.get("message"), str), (where, reply.text)
    assert error.get("code") in allowed, f"{where} → {reply.status_code} {error}, expected one of {allowed}"
    assert reply.status_code == HTTP_STATUS[error["code"]], (where, reply.status_code, error)
    return reply.status_code, error["code"]


async def test_fuzzed_json_bodies_get_4xx_and_write_nothing(service_factory: Factory) -> None:
    service = await service_factory(login_fails=1_000_000)
    astro = await service.astrologer("target")
    victim = await service.user("victim")
    before = await record(service, victim)
    rng = random.Random(SEED + 2)
    fuzzer = BodyFuzzer(rng)
    admin = service.admin_headers()
    anyone: dict[str, str] = {}  # fuzz_http picks a content type per call
    common = {"bad_json", "invalid_input", "payload_too_large"}

    def register() -> Any:
        email = f"new-{rng.getrandbits(32):x}@example.test"
        valid = {"email": email, "password": "long-enough-1", "name": "New"}
        bad = {"email": BAD_EMAILS, "password": BAD_PASSWORDS, "name": BAD_NAMES}
        return fuzzer.mutated(valid, bad, extra_ok=True)

    def login() -> Any:
        if rng.random() < 0.9:  # wrong shapes, refused before any password is hashed
            return fuzzer.mutated(
                {"email": victim.email, "password": "wrong-password"},
                {"email": WRONG_TYPES, "password": WRONG_TYPES},
                extra_ok=True,
            )
        return {"email": rng.choice([victim.email, "nobody@example.test", "' OR 1=1 --@x"]),
                "password": rng.choice(["", "wrong-password", "x" * 5000, "' OR '1'='1"])}

    def refresh() -> Any:
        return {rng.choice(["refresh_token", "token", "refresh"]): rng.choice(
            [*WRONG_TYPES, "", "x.y.z", victim.token, victim.refresh_token[:-3] + "abc", "e30.e30.",
             "x" * 5000]
        )}

    def patch() -> Any:
        valid = {"name": "Renamed", "weight": 2.0, "capacity": 3, "is_top": True, "flow_enabled": False,
                 "languages": ["en"]}
        bad: dict[str, list[Any]] = {
            "weight": [0, -1, "2", True, None, 1e308 * 10, 10**7, [], 2**70],
            "capacity": [0, -1, 1.5, "3", True, 10**6, [], None],
            "is_top": ["true", 1, 0, None, []],
            "flow_enabled": ["false", 0, 1, None],
            "languages": ["en", [""], [1], ["x" * 33], ["en"] * 21, {"en": 1}, None],
            "name": BAD_NAMES,
        }
        return fuzzer.mutated({k: v for k, v in valid.items() if rng.random() < 0.5}, bad, extra_ok=False)

    def flow() -> Any:
        # put_flow ignores fields it does not know, so the refusal must come from these two.
        bad_top_flow: list[Any] = ["", "OFF", "boosted", None, 1, True, [], {"$ne": "x"}]
        bad_boost: list[Any] = [0, -1, "2", True, [], {}, 10**7]
        body: dict[str, Any]
        if rng.random() < 0.5:
            body = {"top_flow": rng.choice(bad_top_flow)}
            if rng.random() < 0.5:
                body["boost"] = rng.choice([3.0, *bad_boost])
        else:
            body = {"top_flow": rng.choice(["off", "on", "boost"]), "boost": rng.choice(bad_boost)}
        return {**body, **({"x": 1} if rng.random() < 0.3 else {})}

    def create() -> Any:
        email = f"astro-{rng.getrandbits(32):x}@example.test"
        valid = {"email": email, "password": "long-enough-1", "name": "A"}
        bad: dict[str, list[Any]] = {
            "email": BAD_EMAILS, "password": BAD_PASSWORDS, "name": BAD_NAMES,
            "weight": [0, "1", -5, True], "capacity": [0, 1.5, "2"],
        }
        return fuzzer.mutated(valid, bad, extra_ok=True)

    patch_paths = [f"/api/v1/admin/astrologers/{astro.id}"] * 6 + [
        f"/api/v1/admin/astrologers/{victim.id}", f"/api/v1/admin/astrologers/{uuid.uuid4()}",
        "/api/v1/admin/astrologers/not-an-id", "/api/v1/admin/astrologers/%27%20OR%201=1",
    ]
    endpoints: list[tuple[str, Callable[[], str], dict[str, str], Callable[[], Any], set[str]]] = [
        ("POST", lambda: "/api/v1/auth/register", anyone, register, common | {"email_taken"}),
        ("POST", lambda: "/api/v1/auth/login", anyone, login, common | {"invalid_credentials"}),
        ("POST", lambda: "/api/v1/auth/refresh", anyone, refresh, common | {"invalid_token"}),
        ("PATCH", lambda: rng.choice(patch_paths), admin, patch, common | {"not_found"}),
        ("PUT", lambda: "/api/v1/admin/flow", admin, flow, common),
        ("POST", lambda: "/api/v1/admin/astrologers", admin, create, common | {"email_taken"}),
    ]
    seen: dict[str, int] = {}
    for i in range(HTTP_CASES):
        method, path, headers, make, allowed = endpoints[i % len(endpoints)]
        body = fuzzer.raw() if rng.random() < 0.25 else make()
        _, code = await fuzz_http(service, fuzzer, method, path(), headers, body, allowed)
        seen[code] = seen.get(code, 0) + 1
    # Bearer tokens of every shape on an authenticated path.
    for _ in range(60):
        token = rng.choice(["", " ", "null", "x" * 5000, "Bearer", victim.refresh_token, "a.b.c", "\u00e9"])
        scheme = rng.choice(["Bearer ", "bearer ", "Basic ", "Bearer  ", ""])
        await fuzz_http(
            service, fuzzer, "GET", "/api/v1/me", {"authorization": (scheme + token).strip().encode()},
            b"", {"unauthorized", "invalid_token"},
        )
    # Every refusal the endpoints have for a bad body came up: the fuzz reached them all.
    assert set(seen) == {
        "bad_json", "invalid_input", "payload_too_large", "invalid_token", "invalid_credentials",
        "not_found",
    }, seen

    assert await record(service, victim) == before
    reply = await service.http.get("/api/v1/admin/flow", headers=admin)
    assert reply.json() == {"top_flow": "on", "boost": 2.0}
    assert (await service.http.get("/readyz")).status_code == 200
    # The victim's account still works as before.
    me = await service.http.get("/api/v1/me", headers={"authorization": f"Bearer {victim.token}"})
    assert me.status_code == 200
