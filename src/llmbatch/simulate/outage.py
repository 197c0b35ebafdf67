"""A scheduled outage: the server goes away for a while, then comes back on the same port.

    outage = Outage(at=5.0, duration=20.0, go_down=sim.take_down, come_up=sim.bring_up)
    outage.on_request()   # the first request starts the countdown
    outage.rearm()        # after a stats reset, the next request starts it again

The countdown starts at the first request rather than at start-up, so "5 s into the run"
means the same thing however long the client took to get going, and a benchmark can reset
the counters between runs to get one outage per run. Going down is the simulator's job
(`Simulator.take_down`: close the listening socket, so new connections are refused, and
abort every open connection, as when a server process dies).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["Outage"]


class Outage:
    """One window of downtime per arming; `down` says whether it is happening now."""

    def __init__(
        self,
        at: float,
        duration: float,
        go_down: Callable[[], Awaitable[None]],
        come_up: Callable[[], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.at = at
        self.duration = duration
        self.down = False
        self._go_down = go_down
        self._come_up = come_up
        self._sleep = sleep
        self._armed = True
        self._task: asyncio.Task[None] | None = None

    def on_request(self) -> None:
        if self._armed:
            self._armed = False
            self._task = asyncio.create_task(self._run())

    def rearm(self) -> None:
        """Let the next request start a new countdown, unless one is pending or under way."""
        if self._task is None or self._task.done():
            self._armed = True

    async def _run(self) -> None:
        await self._sleep(self.at)
        self.down = True
        await self._go_down()
        await self._sleep(self.duration)
        await self._come_up()
        self.down = False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
