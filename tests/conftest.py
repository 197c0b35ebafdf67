"""Shared test helpers: a fake clock whose sleep advances time instantly; simulator processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from llmbatch.simulate import SimulatorProcess


class FakeClock:
    """`clock()` returns virtual seconds; `await sleep(s)` advances them and yields once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# `llmbatch simulate` in its own process, as users run it; the name tests have always used.
SimProcess = SimulatorProcess


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimulatorProcess]]:
    """`start_sim(*args)` starts a simulator process that is stopped after the test."""
    started: list[SimulatorProcess] = []

    def start(*args: str) -> SimulatorProcess:
        sim = SimulatorProcess(*args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()
