"""Model slots for the `queue` style: N requests served at a time, the rest wait in order.

    slots = Slots(2)
    await slots.acquire()      # waits its turn, first come first served
    try: ...                   # generate
    finally: slots.release()

This is how llama.cpp's server, vLLM and Ollama behave when busy: nothing is refused, the
latency a client sees is its wait in the queue plus the generation, so it grows with what
is in flight. A released slot is handed straight to the oldest waiter, so a newcomer can
never overtake the queue (asyncio.Semaphore does not promise that on Python 3.11).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Slots"]


class Slots:
    """A FIFO counting semaphore; `waiting` is the length of its queue."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
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
