"""Stopping background tasks reliably.

A client library may absorb a cancellation while it tears a connection down
(the task then carries on, still marked as cancelling). Cancellation here is
therefore level-triggered: repeated until the task has really stopped, and a
retry loop re-raises it instead of retrying.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("astroq.tasks")

# A store that is away (restarting, paused, unreachable). redis-py's own errors do
# not derive from the built-in ConnectionError, so they are named here.
REDIS_DOWN = (OSError, RedisConnectionError, RedisTimeoutError)
POSTGRES_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                 asyncpg.CannotConnectNowError)
STORES_DOWN = REDIS_DOWN + POSTGRES_DOWN


def log_failure(task: asyncio.Task[object]) -> None:
    """Done-callback for background tasks: a task that dies says so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def unless_cancelled() -> None:
    """Call in an `except` of a retry loop: re-raises a cancellation the library turned
    into a connection error, so the loop stops instead of retrying."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], grace_s: float = 5.0) -> None:
    """Cancels the tasks, again and again, until each has stopped (or grace_s passes)."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.error("task %s did not stop when cancelled", task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a task that ended with an error was expected to
