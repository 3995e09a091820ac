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

log = logging.getLogger("astroq.tasks")


def unless_cancelled() -> None:
    """Call in an `except` of a retry loop: re-raises a cancellation the library turned
    into a connection error, so the loop stops instead of retrying."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], grace_s: float = 5.0) -> None:
    """Cancels the tasks, again and again, until each has stopped (or grace_s passes)."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.error("task %s did not stop when cancelled", task.get_name())
