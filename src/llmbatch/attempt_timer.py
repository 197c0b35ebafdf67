"""`asyncio.timeout` for one task's successive attempts, with one timer moved lazily.

    timer = AttemptTimer(asyncio.current_task())   # once per worker
    timer.start(600.0)                               # before each attempt
    try:
        response = await client.complete(request)
    except BaseException as exc:
        if timer.stop(exc):                          # the CancelledError was the timeout's
            raise TimeoutError from exc
        raise
    timer.stop(None)
    timer.close()                                    # when the worker ends

The semantics are `asyncio.timeout`'s, to the letter: the task is cancelled when an attempt
outlives its deadline (on the loop's clock), and that cancellation becomes a `TimeoutError`
unless someone else cancelled the task too (`Task.cancelling()` counted at the start, as
`asyncio.timeout` does). The cost is not: `asyncio.timeout` arms and cancels a loop timer
per attempt, which was an eighth of the engine's cost per request when answers come fast.
Here an attempt only writes its deadline; the timer stays armed across attempts, and when it
fires while a later attempt is running (whose deadline is later) it re-arms for that one.
So a worker arms about one timer per `request_timeout`, not one per attempt.
"""

from __future__ import annotations

import asyncio

__all__ = ["AttemptTimer"]


class AttemptTimer:
    """The attempt timeout of one task (see the module doc)."""

    __slots__ = ("_armed", "_cancelling", "_expiring", "_handle", "_loop", "_task", "_when")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self._task = task
        self._loop = task.get_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the pending timer fires
        self._when: float | None = None  # the running attempt's deadline
        self._cancelling = 0
        self._expiring = False

    def start(self, delay: float) -> None:
        """An attempt starts now: it may take `delay` seconds."""
        loop = self._loop
        when = loop.time() + delay
        self._when = when
        self._cancelling = self._task.cancelling()
        handle = self._handle
        if handle is not None:
            if self._armed <= when:
                return  # the timer fires first, and re-arms for this deadline then
            handle.cancel()
        self._armed = when
        self._handle = loop.call_at(when, self._fire)

    def stop(self, error: BaseException | None) -> bool:
        """The attempt ended (with `error`, if any). True when `error` is the cancellation
        its timeout caused: the caller raises `TimeoutError` from it."""
        self._when = None
        if not self._expiring:
            return False
        self._expiring = False
        # `Timeout.__aexit__`: the timeout's cancel request is withdrawn in every case; the
        # CancelledError is the timeout's only when no other cancel request came meanwhile.
        return self._task.uncancel() <= self._cancelling and type(error) is asyncio.CancelledError

    def close(self) -> None:
        """The task is done with attempts: let go of the timer."""
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return  # between attempts: the next one arms the timer
        if when > self._armed:
            # A later attempt than the one this timer was armed for: wait for its deadline.
            self._armed = when
            self._handle = self._loop.call_at(when, self._fire)
            return
        self._when = None
        self._expiring = True
        self._task.cancel()
