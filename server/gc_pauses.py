"""Short garbage-collector pauses for a process that holds many sockets.

CPython's full collection walks every object the collector tracks, and it runs
whenever a quarter as many objects as it already holds have been promoted to
its oldest generation, counting those that have since died. A gateway holding
20,000 sockets tracks millions of objects and promotes thousands a second under
load, so it stopped for 0.7-1.5 s every few seconds: every frame to every socket
late by as much.

Here the survivors are moved out of the collector's sight (gc.freeze) every
second, after a collection of the two young generations, so a full collection
walks only what was allocated since. The freeze follows a young collection,
not a full one: a full collection of a second's survivors (a pass of the
fan-out leaves ~100,000) took 8% of a gateway writing 15,000 frames a second,
and 15% of the load generator reading them; cycles among those survivors are
left to the review below. Frozen objects are still freed by reference
counting; only cycles among them are not, so when the heap has grown by half
since the frozen objects were last reviewed, they are thawed and collected
once: a long pause only as often as the heap grows by half, like an array
that doubles.

A process that measures something (the load generator) can take that pause when
it suits, with review(), rather than in the middle of what it measures.

The heap is measured by pymalloc's allocated blocks (a walk over its arenas),
not by gc.get_freeze_count(), which walks every frozen object: called each
second in a gateway holding 20,000 sockets it took a third of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from typing import AsyncIterator

FREEZE_EVERY_S = 1.0
REVIEW_GROWTH = 1.5
_reviewed_blocks = 0  # the heap at the last review; the collector is process-wide too


def review() -> None:
    """Collects everything, the frozen objects too, and freezes what survives."""
    global _reviewed_blocks
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _reviewed_blocks = sys.getallocatedblocks()


async def keep_gc_pauses_short() -> None:
    review()
    while True:
        await asyncio.sleep(FREEZE_EVERY_S)
        if sys.getallocatedblocks() > _reviewed_blocks * REVIEW_GROWTH:
            review()
        else:
            gc.collect(1)
            gc.freeze()


@contextlib.asynccontextmanager
async def short_gc_pauses() -> AsyncIterator[None]:
    """Keeps collector pauses short for as long as the block runs."""
    task = asyncio.create_task(keep_gc_pauses_short(), name="gc-pauses")
    try:
        yield
    finally:
        task.cancel()
