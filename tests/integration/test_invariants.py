"""SPEC §6 under a storm: 200 users and 20 astrologers racing for a bounded time,
then the record in PostgreSQL is checked: every request in exactly one terminal
state, none assigned twice, no capacity exceeded at any moment, oldest first in
every line.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import Account, Service
from tests.invariants import check, read_record

USERS = 200
ASTROLOGERS = 20
STORM_S = 8.0


async def astrologer_bot(service: Service, account: Account, rng: random.Random, stop: asyncio.Event) -> None:
    client = await service.online(account)
    while not stop.is_set():
        try:
            frame = await client.next(timeout=0.2)
        except asyncio.TimeoutError:
            continue
        except ConnectionClosed:
            return
        kind = frame.get("type")
        try:
            if kind == "offer":
                roll = rng.random()
                if roll < 0.65:
                    await client.send({"type": "accept", "offer_id": frame["offer_id"]})
                elif roll < 0.85:
                    await client.send({"type": "decline", "offer_id": frame["offer_id"]})
                # else: let it expire
            elif kind == "assigned" and rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0.02, 0.3))
                await client.send({"type": "end", "session_id": frame["session_id"]})
            elif kind == "status" and frame.get("status") == "break":
                await client.send({"type": "status", "status": "online"})
            if rng.random() < 0.01:
                # Drop the connection and come back within the grace.
                await client.close()
                await asyncio.sleep(rng.uniform(0.05, 0.2))
                client = await service.connect(account)
                if client.frames[0]["state"]["status"] != "online":
                    await client.send({"type": "status", "status": "online"})
        except ConnectionClosed:
            client = await service.connect(account)
            await client.send({"type": "status", "status": "online"})
    await client.close()


async def user_bot(
    service: Service, account: Account, astrologers: list[Account], rng: random.Random, stop: asyncio.Event
) -> None:
    client = await service.connect(account)
    while not stop.is_set():
        direct = rng.random() < 0.2
        target = rng.choice(astrologers).id if direct else None
        try:
            reply = await client.call({"type": "request", "kind": rng.choice(["chat", "call"]), "astrologer_id": target})
            if reply["type"] != "ack":
                await asyncio.sleep(0.1)
                continue
            request_id = reply["request_id"]
            cancel_after = rng.uniform(0.1, 2.0) if rng.random() < 0.15 else None
            leave_after = rng.uniform(0.1, 1.0) if rng.random() < 0.05 else None
            started = asyncio.get_running_loop().time()
            while not stop.is_set():
                try:
                    frame = await client.next(timeout=0.1)
                except asyncio.TimeoutError:
                    waited = asyncio.get_running_loop().time() - started
                    if cancel_after is not None and waited > cancel_after:
                        await client.send({"type": "cancel", "request_id": request_id})
                        cancel_after = None
                    if leave_after is not None and waited > leave_after:
                        # Away for longer or shorter than the grace.
                        await client.close()
                        await asyncio.sleep(rng.choice([0.1, 0.7]))
                        client = await service.connect(account)
                        leave_after = None
                        state = client.frames[0]["state"]
                        if state["request"] is None and state["session"] is None:
                            break
                    continue
                if frame.get("type") == "assigned":
                    await asyncio.sleep(rng.uniform(0.02, 0.3))
                    await client.send({"type": "end", "session_id": frame["session_id"]})
                    await client.wait_for("session_ended", timeout=5)
                    break
                if frame.get("type") in ("cancelled", "session_ended"):
                    break
        except ConnectionClosed:
            client = await service.connect(account)
        except asyncio.TimeoutError:
            continue
    await client.close()


async def wind_down(service: Service, users: list[Account], astrologers: list[Account]) -> None:
    """Ends everything still open, the way the clients themselves would."""
    for account in users:
        client = await service.connect(account)
        state = client.frames[0]["state"]
        if state["request"]:
            await client.call({"type": "cancel", "request_id": state["request"]["request_id"]})
        if state["session"]:
            await client.call({"type": "end", "session_id": state["session"]["session_id"]})
        await client.close()
    for account in astrologers:
        client = await service.connect(account)
        state = client.frames[0]["state"]
        for session in state["sessions"]:
            await client.call({"type": "end", "session_id": session["session_id"]})
        await client.ok({"type": "status", "status": "offline"})
        await client.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_invariants_hold_under_a_storm(service_factory: Any) -> None:
    service: Service = await service_factory(
        offer_timeout_s=0.4, reconnect_grace_s=0.4, matcher_lease_s=3.0
    )
    rng = random.Random(20261203)
    astrologers = [
        await service.astrologer(f"a{i}", weight=rng.choice([1, 2, 3]), capacity=rng.randint(1, 3),
                                 is_top=i < 3)
        for i in range(ASTROLOGERS)
    ]
    users = await service.many_users(USERS)
    stop = asyncio.Event()
    bots = [asyncio.create_task(astrologer_bot(service, a, random.Random(rng.random()), stop)) for a in astrologers]
    await asyncio.sleep(0.3)
    bots += [
        asyncio.create_task(user_bot(service, u, astrologers, random.Random(rng.random()), stop)) for u in users
    ]
    await asyncio.sleep(STORM_S)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*bots), 30)
    await asyncio.sleep(0.5)
    await wind_down(service, users, astrologers)
    await service.eventually("SELECT count(*) FROM requests WHERE state = 'open'", 0, timeout=10)

    record = await read_record(service.fetch)
    requests = record.requests
    assert len(requests) > 200, "the storm was too small to prove anything"
    assert sum(1 for r in requests if r["state"] == "assigned") > 50

    found = check(record, final=True)
    # Every request in exactly one terminal state, with its outcome and time;
    # every offer ended.
    assert found.not_terminal == [] and found.bad_terminal == [] and found.open_offers == []
    # None assigned twice.
    assert found.double_assigned == [] and found.assignment_mismatch == []
    # No astrologer held more offers plus sessions than its capacity, at any moment.
    assert found.capacity == {}
    # Oldest first: no offer passed over an older request of the same line that
    # was waiting (not under offer) and that this astrologer had not already had.
    assert found.passed_over == []
