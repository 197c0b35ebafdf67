"""A FIFO counting semaphore: a released unit goes straight to the oldest waiter.

    room = FifoSemaphore(2)
    if not room.take():        # a free unit now, without a coroutine (the hot path)
        await room.acquire()   # else wait its turn, first come first served
    try: ...
    finally: room.release()

`asyncio.Semaphore` (3.11) neither promises that a newcomer cannot overtake its queue nor
hands a unit over on release: it wakes a waiter and scans its queue past the waiters it
already woke, O(waiters) per release. Both the engine (room for results not yet consumed)
and the simulator (a busy server's model slots, which serve in arrival order) need the
order and the O(1) release. A waiter cancelled as it was handed a unit passes it on, so a
unit is never lost; one cancelled while queued leaves no hole in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["FifoSemaphore"]


class FifoSemaphore:
    """`free` units left; `waiting`: the length of the queue for them."""

    __slots__ = ("_waiters", "free")

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take(self) -> bool:
        """Take a unit without waiting, if one is free and nobody queues for it."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.take():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # handed a unit just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # release() may have dropped it
                    self._waiters.remove(future)
            raise

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free += 1
