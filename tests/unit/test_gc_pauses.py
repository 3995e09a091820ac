"""server/gc_pauses.py in a process of its own (freezing is process-wide)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import asyncio, gc, weakref
from server import gc_pauses

gc_pauses.FREEZE_EVERY_S = 0.05

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    return a

async def main():
    kept = [cycle() for _ in range(1000)]
    task = asyncio.create_task(gc_pauses.keep_gc_pauses_short())
    await asyncio.sleep(0.2)
    frozen = gc.get_freeze_count()
    assert frozen >= 2000, frozen                       # the survivors left the collector's sight
    young = cycle()
    dropped = weakref.ref(cycle())                       # a young cycle, garbage at once
    await asyncio.sleep(0.2)
    assert gc.get_freeze_count() > frozen               # and so do later ones, a pass later
    assert dropped() is None, "a young cycle was frozen instead of collected"

    probe = weakref.ref(kept[0])
    kept.clear()                                         # 2,000 frozen objects in cycles: garbage
    gc.collect()
    assert probe() is not None                           # frozen: a collection does not see them
    grown = [cycle() for _ in range(frozen)]             # the frozen heap grows by half: reviewed
    await asyncio.sleep(0.3)
    assert probe() is None, "cycles among frozen objects were never reclaimed"
    task.cancel()
    print("ok", len(grown), young is not None)

asyncio.run(main())
"""


def test_survivors_are_frozen_and_frozen_cycles_are_reclaimed_when_the_heap_grows() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
