"""The FIFO semaphore shared by the engine (room for unconsumed results) and the simulator
(a busy server's model slots): arrival order, no unit lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from llmbatch.fifo import FifoSemaphore


async def test_waiters_are_served_first_come_first_served_and_a_cancelled_one_leaves_no_hole() -> (
    None
):
    slots = FifoSemaphore(1)
    await slots.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.acquire()
        order.append(name)

    a, b, c = (asyncio.create_task(wait(n)) for n in "abc")
    await asyncio.sleep(0)
    assert slots.waiting == 3
    b.cancel()
    await asyncio.sleep(0)
    assert slots.waiting == 2
    slots.release()  # to a
    await a
    slots.release()  # to c: b's place was given up
    await c
    assert order == ["a", "c"] and slots.free == 0 and slots.waiting == 0
    # Cancelled just after being handed the slot: the slot goes on, it is not lost.
    d = asyncio.create_task(wait("d"))
    await asyncio.sleep(0)
    slots.release()
    d.cancel()
    with pytest.raises(asyncio.CancelledError):
        await d
    assert slots.free == 1 and order == ["a", "c"]


async def test_a_newcomer_cannot_overtake_the_queue() -> None:
    room = FifoSemaphore(1)
    assert room.take()
    queued = asyncio.create_task(room.acquire())
    await asyncio.sleep(0)
    room.release()  # handed to the queued waiter, not left free for anyone
    assert not room.take()
    await queued
    assert room.free == 0 and room.waiting == 0


async def test_a_waiter_stopped_by_any_exception_as_it_was_handed_a_unit_passes_it_on() -> None:
    """Not only a cancellation: an exception thrown into the waiting task (a KeyboardInterrupt
    in the engine's worker) must not take the unit with it."""
    room = FifoSemaphore(0)
    waiter = room.acquire()
    step = waiter.send(None)  # now queued, awaiting its future
    assert room.waiting == 1
    room.release()  # handed over...
    assert step.done()
    with pytest.raises(KeyboardInterrupt):
        waiter.throw(KeyboardInterrupt())  # ...and stopped before it could run
    assert room.free == 1 and room.waiting == 0
